"""Hyperparameter sweeps: one setting of the grid per trial, each trial a run of the ledger.

``run_sweep(loaded)`` takes the grid of :attr:`LoadedParams.sweep` (a ``sweep:`` section,
``--grid`` options; checked by :mod:`mlops_kit.params`), runs the data stage once (a run of
its own, or reused from an earlier one by the cache), then each setting's train and evaluate
stages as a run that takes the data stage's outputs from that run (hard links: the
runner's ``reuse_from``, as ``mlops-kit run --stages train,evaluate --reuse-from RUN``) and
names its sweep in its record (``sweep: {id, trial}``). A failed trial does not stop the
others; the sweep's record (:class:`mlops_kit.artifacts.SweepRecord`, kept by
:mod:`mlops_kit.ledger`) says which failed and why, and :func:`resume_sweep` runs only those
again.

Where a trial runs is the executor seam (:mod:`mlops_kit.execution`): ``executor_factory()``
gives each trial its executor. Locally, the trials run ``jobs`` at a time, each in a thread
of this process, their kernels forked from one zygote that imported the libraries once
(:func:`mlops_kit.execution.local.shared_zygote`). With ``execution.mode: kubernetes`` the
data stage is a Job and the trials ONE Indexed Job (:mod:`mlops_kit.execution.sweep_job`),
``jobs`` pods at a time (default: every trial): each pod runs :func:`trial_in_pod` for the
trial of its ``JOB_COMPLETION_INDEX`` and writes only its run's folder; this process folds
each trial's end into the sweep's record.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from . import _paths, ledger
from .errors import MlopsKitError, ParameterError, ParameterProblem, RunCancelled
from .execution import ExecutionPlan, Executor
from .params import BASELINE_METRICS, METRIC_DIRECTIONS, SKLEARN_DATASETS, LoadedParams, load_params, with_setting

#: the stages a trial runs (after the sweep's one data stage)
TRIAL_STAGES = ("train", "evaluate")
#: ``on_trial(trial)``: a trial's entry of the sweep record, when it starts and when it ends
TrialHandler = Callable[[dict], None]
ExecutorFactory = Callable[[], Executor]


def settings(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def checked_settings(loaded: LoadedParams) -> list[dict[str, Any]]:
    """The grid's settings, each checked by the schema (ParameterError naming the setting)."""
    if not loaded.sweep:
        raise MlopsKitError("A sweep needs a grid. Got no `sweep:` section and no --grid instead.",
                            hint="add --grid 'train.params.C=[0.1, 1, 10]', or a sweep: section to the file.")
    trials = settings(loaded.sweep)
    for setting in trials:  # a combination the schema refuses: before any run
        try:
            with_setting(loaded, setting)
        except ParameterError as exc:
            raise ParameterError([_in_setting(p, setting) for p in exc.problems]) from None
    return trials


def run_sweep(loaded: LoadedParams, *, jobs: int | None = None, on_event=None, on_trial: TrialHandler | None = None,
              executor_factory: ExecutorFactory | None = None, report: bool = True,
              cancel: threading.Event | None = None) -> dict:
    """Run the sweep of ``loaded.sweep``; returns its final record. Every trial's parameters
    are checked before anything runs (ParameterError). ``jobs``: trials at a time (default:
    the cores; on Kubernetes, every trial). ``on_event`` receives the runner's events of the
    data run."""
    trials = checked_settings(loaded)
    jobs = _jobs(jobs, len(trials) if _on_kubernetes(loaded.params) else None)
    metric, higher = _metric(loaded.params)
    sweep = ledger.create_sweep({
        "grid": loaded.sweep, "params": loaded.params.model_dump(mode="json"),
        "parameter_files": [str(f) for f in loaded.files], "overrides": loaded.overrides, "jobs": jobs,
        "metric": metric, "higher_is_better": higher,
        "trials": [{"index": i, "setting": setting} for i, setting in enumerate(trials)]})
    return _carry_out(sweep, loaded, range(len(trials)), jobs, on_event, on_trial, executor_factory, report, cancel)


def resume_sweep(sweep_id: str, *, jobs: int | None = None, on_event=None, on_trial: TrialHandler | None = None,
                 executor_factory: ExecutorFactory | None = None, report: bool = True,
                 cancel: threading.Event | None = None) -> dict:
    """Run again the trials of a sweep that did not succeed (and its data stage if that
    failed), with the sweep's own parameters; a trial whose run failed in a stage continues
    that run (:func:`mlops_kit.runner.resume_run`)."""
    record = ledger.read_sweep(sweep_id)
    sweep = ledger.open_sweep(record["id"])
    if record["status"] == "running":
        raise MlopsKitError(f"Sweep {record['id']} cannot be resumed: it is still running (its process holds the "
                            "sweep's lock).")
    todo = [t["index"] for t in record["trials"] if t["status"] != "succeeded"]
    if not todo and record["data_run"]:
        raise MlopsKitError(f"Sweep {record['id']} cannot be resumed: every trial succeeded.")
    jobs = _jobs(jobs if jobs is not None else record["jobs"])
    try:
        sweep.acquire()
    except BlockingIOError:
        raise MlopsKitError(f"Sweep {record['id']} cannot be resumed: another process holds its lock.") from None
    loaded = load_params(recorded=record["params"], recorded_from=str(sweep.record_path))
    loaded.sweep = record["grid"]
    sweep.update(status="running", finished=None, error=None, resumed=[*record["resumed"], ledger.now()])
    return _carry_out(sweep, loaded, todo, jobs, on_event, on_trial, executor_factory, report, cancel)


def run_trial(sweep: ledger.SweepFolder, index: int, loaded: LoadedParams, executor: Executor,
              cancel: threading.Event | None = None) -> dict:
    """One trial (by its index in the sweep's record) in ``executor``: a new run of its
    setting, or the continuation of its failed run; the trial's entry, as recorded."""
    from . import runner

    record = sweep.read()
    trial, data_run = record["trials"][index], record["data_run"]
    started: list[str] = []

    def note_run(event) -> None:
        if event.kind == "run_started" and not started:
            started.append(event.run_id)
            sweep.update_trial(index, run=event.run_id)

    sweep.update_trial(index, status="running", error=None, attempts=trial["attempts"] + 1)
    try:
        if trial["run"] and _resumable(trial["run"]):
            runner.resume_run(trial["run"], executor=executor, on_event=note_run, cancel=cancel)
        else:
            runner.run_pipeline(with_setting(loaded, trial["setting"]), stages=list(TRIAL_STAGES),
                                reuse_from=data_run, executor=executor, on_event=note_run, cancel=cancel,
                                record={"sweep": {"id": sweep.id, "trial": index}})
        outcome = {"status": "succeeded"}
    except RunCancelled:
        outcome = {"status": "interrupted", "error": "cancelled"}
    except MlopsKitError as exc:
        outcome = {"status": "failed", "error": str(exc)}
    except BaseException as exc:
        sweep.update_trial(index, status="interrupted", error=f"{type(exc).__name__}: {exc}")
        raise
    return sweep.update_trial(index, **outcome)["trials"][index]


def _carry_out(sweep: ledger.SweepFolder, loaded: LoadedParams, todo, jobs: int, on_event, on_trial,
               executor_factory: ExecutorFactory | None, report: bool, cancel: threading.Event | None) -> dict:
    from .execution.local import LocalExecutor, shared_zygote

    kube = _on_kubernetes(loaded.params)
    zygote = shared_zygote() if executor_factory is None and not kube else None
    factory = executor_factory or (_sweep_jobs(loaded.params) if kube else lambda: LocalExecutor(zygote=zygote))
    cancel = cancel or threading.Event()
    notify = on_trial or (lambda trial: None)
    try:
        _data_stage(sweep, loaded, factory, on_event)
        if kube:
            _indexed_trials(sweep, list(todo), jobs, factory, notify, cancel)
        else:
            _threaded_trials(sweep, loaded, list(todo), jobs, factory, notify, cancel)
        trials = sweep.read()["trials"]
        done = [t for t in trials if t["status"] == "succeeded"]
        sweep.update(status="succeeded" if len(done) == len(trials) else "partial" if done else "failed")
        if report:  # the report reads the ledger: a notebook on this machine, wherever the trials ran
            _report(sweep, LocalExecutor if kube else factory)
        return sweep.update(finished=ledger.now())
    except BaseException as exc:
        failed = isinstance(exc, MlopsKitError) and not isinstance(exc, RunCancelled)
        sweep.update(status="failed" if failed else "interrupted", finished=ledger.now(),
                     error=str(exc) or type(exc).__name__)
        raise
    finally:
        if zygote is not None:
            zygote.close()
        sweep.release()


def _threaded_trials(sweep: ledger.SweepFolder, loaded: LoadedParams, todo: list[int], jobs: int,
                     factory: ExecutorFactory, notify: TrialHandler, cancel: threading.Event) -> None:
    """The trials in threads of this process, ``jobs`` at a time, each with its executor."""
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mlops-kit-trial") as pool:
        def one(index: int) -> None:
            if cancel.is_set():
                return
            notify(sweep.read()["trials"][index] | {"status": "running"})
            notify(run_trial(sweep, index, loaded, factory(), cancel))

        futures = [pool.submit(one, index) for index in todo]
        try:
            for future in futures:
                future.result()
        except BaseException:
            cancel.set()  # the running trials stop before their next stage; no new one starts
            raise


def _indexed_trials(sweep: ledger.SweepFolder, todo: list[int], jobs: int, factory: ExecutorFactory,
                    notify: TrialHandler, cancel: threading.Event) -> None:
    """The trials as one Indexed Job (:class:`mlops_kit.execution.sweep_job.SweepJobs`); each
    trial's end folded into the sweep's record here, its run found in the ledger."""
    runner = factory()
    if not hasattr(runner, "run_trials"):
        raise MlopsKitError(f"A sweep with execution.mode kubernetes needs the Indexed Job executor. Got "
                            f"{type(runner).__name__} instead.")
    for index in todo:
        trial = sweep.read()["trials"][index]
        sweep.update_trial(index, status="pending", error=None, attempts=trial["attempts"] + 1)

    def started(index: int) -> None:
        notify(sweep.update_trial(index, status="running")["trials"][index])

    def ended(index: int, end: dict) -> None:
        run = trial_run(sweep.id, index) or sweep.read()["trials"][index]["run"]
        notify(sweep.update_trial(index, status=end["status"], error=end.get("error"), run=run)["trials"][index])

    try:
        runner.run_trials(sweep, todo, jobs, on_start=started, on_end=ended, cancel=cancel)
    except BaseException:
        for trial in sweep.read()["trials"]:
            if trial["index"] in todo and trial["status"] in ("pending", "running"):
                sweep.update_trial(trial["index"], status="interrupted", run=trial_run(sweep.id, trial["index"]))
        raise


def trial_run(sweep_id: str, index: int) -> str | None:
    """The newest run of the ledger made for trial ``index`` of the sweep (its record's
    ``sweep``), or None; read only (a pod reads it too)."""
    for run in ledger.iter_runs():
        try:
            marker = run.read().get("sweep")
        except MlopsKitError:
            continue                     # an unreadable record is no trial's
        if marker == {"id": sweep_id, "trial": index}:
            return run.id
    return None


def trial_in_pod(sweep_dir, index: int) -> str:
    """One trial in a pod of the sweep's Indexed Job (:mod:`mlops_kit.execution.sweep_job`):
    its run continued when an earlier pod of this trial left it failed or interrupted, else a
    new run of its setting borrowing the data run's outputs; kernels inside the pod. Writes
    only that run's folder (the sweep's record is the runner's); returns the run's id."""
    from . import runner
    from .execution.local import LocalExecutor

    sweep = ledger.SweepFolder(sweep_dir)
    record = sweep.read()
    if not 0 <= index < len(record["trials"]):
        raise MlopsKitError(f"A trial index of sweep {record['id']} must be below {len(record['trials'])}. Got "
                            f"{index} instead.")
    trial = record["trials"][index]
    previous = trial_run(record["id"], index)
    if previous is not None and _resumable(previous):
        return runner.resume_run(previous, executor=LocalExecutor())["id"]
    loaded = load_params(recorded=record["params"], recorded_from=str(sweep.record_path))
    return runner.run_pipeline(with_setting(loaded, trial["setting"]), stages=list(TRIAL_STAGES),
                               reuse_from=record["data_run"], executor=LocalExecutor(),
                               record={"sweep": {"id": record["id"], "trial": index}})["id"]


def _on_kubernetes(params) -> bool:
    return params.execution.mode == "kubernetes"


def _sweep_jobs(params) -> ExecutorFactory:
    from .execution.sweep_job import SweepJobs

    return lambda: SweepJobs(params)


def _data_stage(sweep: ledger.SweepFolder, loaded: LoadedParams, factory: ExecutorFactory, on_event) -> None:
    """The data stage, once for all trials (reused by the cache when an earlier run made the
    same split); its run is the trials' ``reuse_from``. Kept when it succeeded already."""
    from . import artifacts, runner

    record = sweep.read()
    if record["data_run"] and ledger.read_run(record["data_run"], champion=False)["status"] == "succeeded":
        return
    data = runner.run_pipeline(loaded, stages=["data"], executor=factory(), on_event=on_event,
                               record={"sweep": {"id": sweep.id, "trial": None}})
    changes: dict[str, Any] = {"data_run": data["id"]}
    if record["metric"] is None:  # the task is the data's (a table's target): known now
        task = artifacts.SCHEMA.load(_paths.runs_dir() / data["id"]).task
        changes["metric"], changes["higher_is_better"] = _metric(loaded.params, task)
    sweep.update(**changes)


def _report(sweep: ledger.SweepFolder, factory: ExecutorFactory) -> None:
    """The sweep's report notebook (the metric against each swept value) executed into the
    sweep's folder, and its HTML; a report that fails is noted, the sweep stands."""
    from . import runner
    from .stages import Stage

    notebooks = _paths.notebooks_dir()
    if not (notebooks / _paths.SWEEP_REPORT_NOTEBOOK).is_file():
        return
    stage = Stage("sweep_report", _paths.SWEEP_REPORT_NOTEBOOK, None,
                  warm_imports=("pandas", "matplotlib.pyplot", "mlops_kit.sweep"))
    for folder in (sweep.notebooks, sweep.reports):
        folder.mkdir(exist_ok=True)
    executor = factory()
    try:
        executor.start(ExecutionPlan([stage], [], notebooks))
        executor.ready()
        outcome = executor.execute(stage, sweep.path, {"sweep_id": sweep.id})
    finally:
        executor.stop()
    notebook = sweep.notebooks / stage.notebook
    if outcome.status == "failed":
        sweep.update(report=None, error=f"the report failed in cell {outcome.cell_index}: {outcome.exception}: "
                                        f"{outcome.detail}")
        return
    html = runner.export_html(notebook, sweep.reports / (notebook.stem + ".html"))
    sweep.update(report=str(html.relative_to(sweep.path)))


def _resumable(run_id: str) -> bool:
    try:
        return ledger.read_run(run_id, champion=False)["status"] in ("failed", "interrupted")
    except MlopsKitError:
        return False  # removed meanwhile: the trial runs anew


def _jobs(jobs: int | None, default: int | None = None) -> int:
    """Trials at a time: ``jobs``, else ``default`` (on Kubernetes: every trial), else the cores."""
    import os

    if jobs is not None and jobs < 1:
        raise ParameterError([ParameterProblem("--jobs", "jobs", "a number of trials at a time, at least 1",
                                               repr(jobs))])
    return jobs or default or os.cpu_count() or 1


def _in_setting(problem: ParameterProblem, setting: dict) -> ParameterProblem:
    shown = ", ".join(f"{k}={v!r}" for k, v in setting.items())
    return ParameterProblem(f"sweep setting {shown}", problem.key, problem.expected, problem.found,
                            problem.suggestion)


def _metric(params, task: str | None = None) -> tuple[str | None, bool]:
    """The leaderboard's metric: the one the gate compares with the dummy baseline (higher is
    better for a score, lower for an error); None while the task is unknown."""
    source = params.data.source
    task = task or params.task or (SKLEARN_DATASETS.get(source.split(":", 1)[1]) if source.startswith("sklearn:")
                                   else None)
    if task is None:
        return None, True
    metric = params.evaluate.baseline_metric or BASELINE_METRICS[task]
    return metric, METRIC_DIRECTIONS[task][metric] == "min"


# --- the leaderboard ---------------------------------------------------------------------------

def leaderboard(sweep_id: str | None = None) -> dict:
    """A sweep (default: the newest) and its trials, best first by the sweep's metric, then
    those without it: ``{"id", "status", "metric", "higher_is_better", "grid", "data_run",
    "trials": [{"index", "run", "status", "params", "metrics", "error"}, ...]}``; ``params``
    is the trial's setting, ``metrics`` its run's headline metrics."""
    record = ledger.read_sweep(sweep_id)
    metric, higher = record["metric"], record["higher_is_better"]
    trials = []
    for trial in record["trials"]:
        metrics: dict = {}
        if trial["run"]:
            try:
                metrics = ledger.read_run(trial["run"], champion=False).get("metrics") or {}
            except MlopsKitError:
                pass  # the run was removed since
        trials.append({"index": trial["index"], "run": trial["run"], "status": trial["status"],
                       "params": trial["setting"], "metrics": metrics, "error": trial["error"]})

    def rank(trial: dict):
        value = trial["metrics"].get(metric) if trial["status"] == "succeeded" else None
        return (value is None, 0 if value is None else (-value if higher else value), trial["index"])

    trials.sort(key=rank)
    return {"id": record["id"], "status": record["status"], "metric": metric, "higher_is_better": higher,
            "grid": record["grid"], "data_run": record["data_run"], "report": record["report"],
            "trials": trials}


def best_trial(board: dict) -> dict | None:
    """The best succeeded trial whose model passed the gate (what ``runs promote`` takes)."""
    return next((t for t in board["trials"] if t["status"] == "succeeded" and t["metrics"].get("gate_passed")
                 and t["metrics"].get(board["metric"]) is not None), None)


def plot_leaderboard(board: dict):
    """The sweep's metric against each swept value, one panel per key (the report's figure)."""
    import matplotlib.pyplot as plt

    keys = list(board["grid"])
    figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    done = [t for t in board["trials"] if t["metrics"].get(board["metric"]) is not None]
    for axis, key in zip(axes[0], keys):
        values = board["grid"][key]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        where = {repr(v): i for i, v in enumerate(values)}
        xs = [t["params"][key] if numeric else where[repr(t["params"][key])] for t in done]
        axis.scatter(xs, [t["metrics"][board["metric"]] for t in done])
        if numeric and min(values) > 0 and max(values) / min(values) >= 100:
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(range(len(values)), [str(v) for v in values], rotation=30)
        axis.set_xlabel(key)
        axis.set_ylabel(board["metric"])
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
