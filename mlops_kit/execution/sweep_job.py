"""A sweep's trials as ONE Indexed Job (``execution.mode: kubernetes``).

The data stage runs once, as any stage does on Kubernetes (a Job of its own, through
:class:`~mlops_kit.execution.kubernetes.KubernetesExecutor`). Then the trials to run become
one Job with ``completionMode: Indexed``: ``completions`` = the trials, ``parallelism`` =
``--jobs`` (default: every trial at once; the scheduler holds back the pods whose requests do
not fit), ``backoffLimitPerIndex`` = ``execution.retries`` and ``maxFailedIndexes`` = the
trials, so a failed trial never stops the others. Its ``podFailurePolicy`` is a stage Job's
with ``FailIndex`` for ``FailJob``: a failing cell fails that trial at once; a disruption is
not counted; anything else (OOMKilled, an eviction, a dead kernel) is retried within the
index's limit.

Each pod is a stage pod (the stage image, the claim at the runs folder's path, the same env,
resources and security) running ``python -m mlops_kit.execution.sweep_job SWEEP_DIR TRIALS``:
Kubernetes gives it ``JOB_COMPLETION_INDEX``, the position in the JSON list ``TRIALS`` of the
sweep's trial indexes (a resumed sweep's Job holds only the trials to run again). The pod
reads the sweep's record (read-only), runs train and evaluate of its trial as one run of the
ledger borrowing the data run's outputs (:func:`mlops_kit.sweep.trial_in_pod`, kernels inside
the pod) and writes only that run's folder. The notebooks it runs are the sweep folder's
copy (``<sweep>/project/notebooks``, copied by the runner before the Job: the same bytes the
fingerprints hash). The runner (:class:`SweepJobs`) watches ``status.completedIndexes`` and
``failedIndexes`` and folds each trial's end into ``sweep.json``: one writer, the runner.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .. import _paths
from ..errors import MlopsKitError
from . import ExecutionPlan, skip_iri_grammar
from .job import EXIT_BAD_INPUT, EXIT_CELL_FAILED, EXIT_KERNEL_DIED, FAIL_AT_ONCE, _say
from .kubernetes import (MANAGED_BY, KubernetesExecutor, _cannot_start, _pod_end, _termination_message, job_name,
                         render_job, validate_jobs)

if TYPE_CHECKING:
    import threading

    from ..ledger import SweepFolder
    from ..params import RunParams

LABEL_SWEEP = "mlops-kit/sweep"
#: The annotation and label the Job controller puts on an Indexed Job's pods; its env var.
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
INDEX_ENV = "JOB_COMPLETION_INDEX"
#: The sweep folder's copy of the notebooks its pods run (their MLOPS_KIT_PROJECT_DIR).
PROJECT_SUBDIR = "project"


def render_sweep_job(sweep_dir: Path, trials: list[int], params: "RunParams", *, parallelism: int,
                     stages: tuple[str, ...] = ("train", "evaluate"), runs_dir: Path | None = None,
                   image: str | None = None) -> dict:
    """The Indexed Job of the trials ``trials`` (indexes in the sweep's record) of the sweep in
    ``sweep_dir`` (a folder of the runs folder, the claim's); ``image``: the stage image's
    reference (default: ``execution.image``)."""
    from ..stages import Stage

    sweep_dir = Path(sweep_dir)
    sweep_id = sweep_dir.name
    execution = params.execution
    # a stage's Job gives the pod: image, claim, scratch, env, resources, security
    job = render_job(Stage("trials", "", None), sweep_dir, {}, params, runs_dir=runs_dir, image=image)
    name = job_name(f"sweep-{sweep_id}", "trials", job["metadata"]["name"].rsplit("-", 1)[1])
    labels = {**MANAGED_BY, "app.kubernetes.io/component": "sweep", LABEL_SWEEP: sweep_id}
    job["metadata"].update(name=name, labels=labels)
    spec, pod = job["spec"], job["spec"]["template"]
    pod["metadata"]["labels"] = dict(labels)
    del spec["backoffLimit"]                              # per index instead
    waves = -(-len(trials) // parallelism)
    spec.update(
        completionMode="Indexed", completions=len(trials), parallelism=min(parallelism, len(trials)),
        backoffLimitPerIndex=execution.retries, maxFailedIndexes=len(trials),
        # each trial's stages within execution.timeout, each retry included, wave after wave
        activeDeadlineSeconds=int(execution.timeout * len(stages) * (execution.retries + 1) * waves))
    for rule in spec["podFailurePolicy"]["rules"]:
        if rule["action"] == "FailJob":
            rule["action"] = "FailIndex"                  # a failing cell fails its trial, not the sweep
    container = pod["spec"]["containers"][0]
    container.update(command=["python3", "-m", "mlops_kit.execution.sweep_job"],
                     args=[str(sweep_dir), json.dumps(list(trials))], workingDir=str(sweep_dir))
    container["env"].append({"name": _paths.PROJECT_DIR_ENV, "value": str(sweep_dir / PROJECT_SUBDIR)})
    return job


def planned_sweep_jobs(loaded, trials: int, parallelism: int | None) -> list[dict]:
    """The Jobs a sweep would create, validated against the Kubernetes schema: the data
    stage's (unless the cache reuses it) and the trials' Indexed Job; nothing is created
    (``mlops-kit sweep --dry-run``)."""
    from .. import ledger
    from .kubernetes import planned_jobs, stage_image_ref

    params = loaded.params
    jobs = planned_jobs(loaded, stages=["data"])
    sweep_dir = _paths.sweeps_dir() / ledger.new_run_id()
    jobs.append(render_sweep_job(sweep_dir, list(range(trials)), params, parallelism=parallelism or trials,
                                 image=params.execution.image or stage_image_ref(params)))
    validate_jobs(jobs, params.deploy.kubernetes_version)
    return jobs


def parse_indexes(text: str | None) -> set[int]:
    """``"0,2-4"`` (a Job's ``completedIndexes``/``failedIndexes``) as ``{0, 2, 3, 4}``."""
    found: set[int] = set()
    for part in (text or "").split(","):
        if part.strip():
            first, _, last = part.partition("-")
            found.update(range(int(first), int(last or first) + 1))
    return found


#: ``on_end(trial index, {"status", "run", "error"})`` as each trial ends; ``on_start(trial index)``
TrialEnd = Callable[[int, dict], None]


class SweepJobs(KubernetesExecutor):
    """The executor of a Kubernetes sweep: the data stage as a stage Job (inherited), the
    trials as one Indexed Job (:meth:`run_trials`)."""

    def run_trials(self, sweep: "SweepFolder", trials: list[int], parallelism: int, *,
                   on_start: Callable[[int], None], on_end: TrialEnd, cancel: "threading.Event | None" = None) -> None:
        """Run ``trials`` (indexes of the sweep's record) as one Indexed Job; each trial's end
        goes to ``on_end`` as its index completes or fails. Interrupted, or ``cancel`` set
        (RunCancelled): the Job is deleted."""
        from ..stages import STAGES

        stages = [s for s in STAGES if s.name in ("train", "evaluate")]
        self.start(ExecutionPlan(stages, [], self._plan.notebooks if self._plan else _paths.notebooks_dir()))
        self.ready()                                      # the claim exists
        notebooks = sweep.path / PROJECT_SUBDIR / _paths.NOTEBOOKS_SUBDIR
        notebooks.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            shutil.copyfile(self._plan.notebooks / stage.notebook, notebooks / stage.notebook)
        execution = self.params.execution
        job = render_sweep_job(sweep.path, trials, self.params, parallelism=parallelism, runs_dir=self.runs_dir,
                               image=self.image)
        name = job["metadata"]["name"]
        cluster = self._connect()
        cluster.create(job)
        self._running.append(name)
        self.log(f"trials: Indexed Job {execution.namespace}/{name} ({len(trials)} trial(s), "
                 f"{job['spec']['parallelism']} at a time, image {self.image})")
        try:
            self._watch(cluster, job, trials, on_start, on_end, cancel)
            self._running.remove(name)                    # ended: kept a day for `kubectl logs`
        finally:
            self.stop()                                   # interrupted: the Job is deleted

    def _watch(self, cluster, job: dict, trials: list[int], on_start, on_end: TrialEnd, cancel=None) -> None:
        from ..errors import RunCancelled

        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        deadline = time.monotonic() + job["spec"]["activeDeadlineSeconds"] + 120
        started: set[int] = set()
        ended: set[int] = set()
        while True:
            if cancel is not None and cancel.is_set():
                raise RunCancelled(job["metadata"]["labels"][LABEL_SWEEP], "trials")
            status = (cluster.get("Job", namespace, name) or {}).get("status") or {}
            finished = {c.get("type"): c for c in status.get("conditions") or []
                        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed")}
            pods = cluster.list_pods(namespace, {"job-name": name})
            by_index: dict[int, list[dict]] = {}
            for pod in pods:
                meta = pod.get("metadata") or {}
                index = (meta.get("annotations") or {}).get(INDEX_KEY, (meta.get("labels") or {}).get(INDEX_KEY))
                if index is not None and index.isdigit() and int(index) < len(trials):
                    by_index.setdefault(int(index), []).append(pod)
            for position in sorted(set(by_index) - started - ended):
                started.add(position)
                on_start(trials[position])
            completed, failed = parse_indexes(status.get("completedIndexes")), parse_indexes(status.get("failedIndexes"))
            for position in sorted((completed | failed) - ended):
                ended.add(position)
                on_end(trials[position], self._trial_end(position in completed, by_index.get(position, []),
                                                         finished.get("Failed")))
            stuck = _cannot_start(pods)
            if finished or stuck is not None or time.monotonic() > deadline:
                if not finished:
                    cluster.delete("Job", namespace, name)
                reason = (f"the trial's pod cannot start: {stuck[0]}: {stuck[1]} (execution.image "
                          f"{self.image})" if stuck is not None else
                          f"the Job ended ({_said(finished.get('Failed') or finished.get('Complete'))}) before "
                          "this trial did" if finished else "the Job did not end within its deadline")
                for position in range(len(trials)):
                    if position not in ended:
                        on_end(trials[position], {"status": "failed", "error": reason})
                return
            time.sleep(self.poll)

    def _trial_end(self, succeeded: bool, pods: list[dict], condition: dict | None) -> dict:
        """A trial's end from its pods: ``{"status", "error"}`` (its run is found in the ledger)."""
        if succeeded:
            return {"status": "succeeded", "error": None}
        ends = [_pod_end(pod) for pod in pods]
        for end in ends:
            if end.get("exit_code") in FAIL_AT_ONCE:
                said = _termination_message(end.get("message"))
                return {"status": "failed", "error": said.get("detail") or end.get("message") or "failed"}
        outcome = self._failed(condition or {"reason": "FailedIndex", "message": "its pods failed past "
                                                       "backoffLimitPerIndex"}, pods, Path(), 0.0)
        return {"status": "failed", "error": f"{outcome.exception}: {outcome.detail}"}


def _said(condition: dict | None) -> str:
    condition = condition or {}
    return ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part) or "no reason"


# --- in the pod ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """The pod's command: the trial of ``JOB_COMPLETION_INDEX``; the exit codes and the
    termination message of a stage's pod (:mod:`.job`)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        sweep_arg, trials_arg = args
        trials = json.loads(trials_arg)
        if not isinstance(trials, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in trials):
            raise ValueError(f"the trials must be a JSON list of trial indexes. Got {trials_arg!r} instead.")
        position = os.environ.get(INDEX_ENV, "")
        if not position.isdigit() or int(position) >= len(trials):
            raise ValueError(f"{INDEX_ENV} must be an index below {len(trials)} (an Indexed Job's pod). Got "
                             f"{position!r} instead.")
        sweep_dir = Path(sweep_arg)
        if not (sweep_dir / _paths.SWEEP_RECORD).is_file():
            raise ValueError(f"the sweep's record must exist on the volume. Got no file at "
                             f"{sweep_dir / _paths.SWEEP_RECORD} instead.")
    except ValueError as exc:
        _say({"exception": "BadJobInput", "detail": str(exc), "cell_index": None})
        return EXIT_BAD_INPUT
    skip_iri_grammar()
    from ..errors import StageFailed
    from ..sweep import trial_in_pod

    trial = trials[int(position)]
    try:
        run_id = trial_in_pod(sweep_dir, trial)
    except StageFailed as exc:               # a dead kernel (out of memory) is retried, a cell's error not
        _say({"cell_index": exc.cell_index, "exception": exc.exception, "stage": exc.stage, "detail": str(exc)})
        return EXIT_KERNEL_DIED if exc.exception == "DeadKernelError" else EXIT_CELL_FAILED
    except MlopsKitError as exc:             # a setting refused where the stage's libraries are
        _say({"cell_index": None, "exception": type(exc).__name__, "detail": str(exc)})
        return EXIT_CELL_FAILED
    print(f"trial {trial}: run {run_id} succeeded", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["INDEX_ENV", "INDEX_KEY", "LABEL_SWEEP", "SweepJobs", "main", "parse_indexes", "planned_sweep_jobs",
           "render_sweep_job"]
