"""The Kubernetes executor (``execution.mode: kubernetes``): each stage a Job.

The Job's one pod runs ``python -m mlops_kit.execution.job`` (papermill, the same notebook
and parameters as locally) in the stage image: ``execution.image``, else the kit's own, built
from this environment and checkout (or found cached) and shipped to the cluster as a serving
image is, before the first Job (:func:`mlops_kit.image.ensure_stage_image`). The run folder is not
copied anywhere: the PersistentVolumeClaim ``execution.volume`` (on MicroK8s, a claim on
``hostpath-storage``) holds the runs folder, and the pod mounts it at the very path the runs
folder has here, so ``run_dir``, the record's paths and a data file inside the runs folder
mean the same in the pod and in the runner. The runner (plan, cache, ledger, reports) reads
the stage's outputs where it always does; ``runs show``, the executed notebooks and the
reports work unchanged. This asks that the runner runs where the volume's folder is: the
MicroK8s node, or the team's server (``git push server``).

How a Job ends is decided by its ``podFailurePolicy``: a failing cell or bad job input (the
exit codes of :mod:`.job`) fails it at once; a disruption (``DisruptionTarget``) is not
counted; anything else (OOMKilled, an eviction) is retried up to ``execution.retries``. The
end becomes an :class:`~mlops_kit.execution.Outcome`: the cell and its exception (from the
pod's termination message), or ``OOMKilled`` with the memory limit, ``Evicted``,
``DeadlineExceeded`` with the timeout, an image that cannot be pulled.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import _paths
from ..errors import K8sDeployError, MlopsKitError
from . import ExecutionPlan, Outcome, executed_notebook
from .job import FAIL_AT_ONCE

if TYPE_CHECKING:
    from ..params import RunParams
    from ..stages import Stage

CONTAINER = "stage"
LABEL_RUN = "mlops-kit/run"
LABEL_STAGE = "mlops-kit/stage"
MANAGED_BY = {"app.kubernetes.io/managed-by": "mlops-kit", "app.kubernetes.io/component": "stage"}
#: The pod's only writable folder besides the runs folder (HOME, TMPDIR: the kernel's files).
SCRATCH = "/mlops-kit-scratch"
#: Finished Jobs (and their pods' logs) stay this long for `kubectl logs`.
KEEP_FINISHED_SECONDS = 24 * 3600
#: Seconds between two reads of a running stage's log.
LOG_EVERY = 2.0
#: Container states that never end by themselves: the stage cannot start.
_CANNOT_START = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError")


def job_name(run_id: str, stage: str, suffix: str = "") -> str:
    """``mlops-kit-<run id>-<stage>[-<suffix>]``, a DNS label (at most 63 characters). Each
    execution of a stage is a Job of its own (a resumed stage's new Job beside the failed one)."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"mlops-kit-{run_id}-{stage}".lower()).strip("-")
    return (base[:63 - len(suffix) - 1].rstrip("-") + "-" + suffix) if suffix else base[:63].rstrip("-")


def render_job(stage: "Stage", run_dir: Path, parameters: dict[str, Any], params: "RunParams", *,
               runs_dir: Path | None = None, image: str | None = None) -> dict:
    """The Job that executes ``stage`` into ``run_dir`` (a folder of the runs folder, which is
    the volume's folder and is mounted at the same path in the pod); ``image``: the stage
    image's reference (default: ``execution.image``)."""
    execution = params.execution
    runs_dir = Path(runs_dir or _paths.runs_dir())
    run_dir = Path(run_dir)
    if not run_dir.is_relative_to(runs_dir):
        raise MlopsKitError(f"A stage executed by a Job must write into the runs folder {runs_dir} (the volume "
                            f"{execution.volume}). Got the run folder {run_dir} instead.")
    run_id = run_dir.relative_to(runs_dir).parts[0]
    notebook = executed_notebook(run_dir, stage)
    labels = {**MANAGED_BY, LABEL_RUN: run_id, LABEL_STAGE: stage.name}
    resources = {"cpu": execution.cpu, "memory": execution.memory}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(run_id, stage.name, secrets.token_hex(2)), "namespace": execution.namespace, "labels": labels},
        "spec": {
            "backoffLimit": execution.retries,
            "activeDeadlineSeconds": int(execution.timeout),
            "ttlSecondsAfterFinished": KEEP_FINISHED_SECONDS,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob",               # a failing cell, a parameter error: no retry
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(FAIL_AT_ONCE)}},
                {"action": "Ignore",                # preempted, drained, deleted: not the stage's fault
                 "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",       # podFailurePolicy's requirement; retries are new pods
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": CONTAINER,
                        "image": image or execution.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "-m", "mlops_kit.execution.job"],
                        "args": [str(notebook), json.dumps(parameters, sort_keys=True)],
                        "workingDir": str(notebook.parent),
                        "env": [{"name": _paths.RUNS_DIR_ENV, "value": str(runs_dir)},
                                {"name": "HOME", "value": SCRATCH},
                                {"name": "TMPDIR", "value": SCRATCH},
                                {"name": "MPLCONFIGDIR", "value": f"{SCRATCH}/matplotlib"},
                                {"name": "PYTHONUNBUFFERED", "value": "1"}],
                        "resources": {"requests": dict(resources), "limits": dict(resources)},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "runs", "mountPath": str(runs_dir)},
                                         {"name": "scratch", "mountPath": SCRATCH}],
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }],
                    "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": execution.volume}},
                                {"name": "scratch", "emptyDir": {}}],
                },
            },
        },
    }


def job_image(job: dict) -> str:
    return job["spec"]["template"]["spec"]["containers"][0]["image"]


def stage_image_ref(params: "RunParams") -> str:
    """The kit's stage image a run would use (``execution.image`` empty), named without
    building it: a content hash of this environment's versions and this checkout."""
    from ..image import stage_ref

    return stage_ref(registry=params.package.registry)


def validate_jobs(jobs: list[dict], version: str) -> None:
    """The Jobs against the Kubernetes schema (strict), as the deploy manifests are."""
    from ..errors import ManifestError
    from ..kube import schema_problems

    problems = schema_problems(jobs, version, source="rendered Job")
    if problems:
        raise ManifestError(problems, version=version)


class KubernetesExecutor:
    """The :class:`~mlops_kit.execution.Executor` of one Kubernetes Job per stage.

    ``api_client``: a ``kubernetes.client.ApiClient`` (tests: one pointed at a fake API
    server); default: the team's server through its SSH tunnel when ``server.host`` is set,
    else the kubeconfig found (:func:`mlops_kit.kube.load_api_client`)."""

    def __init__(self, params: "RunParams", *, api_client: Any = None, log: Callable[[str], None] | None = None,
                 poll: float = 0.5, runs_dir: Path | None = None):
        self.params = params
        self.log = log or _to_stderr
        self.poll = poll
        self.runs_dir = Path(runs_dir or _paths.runs_dir())
        self._api_client = api_client
        self.image = params.execution.image          # None: the kit's stage image, resolved in ready()
        self._cluster = None
        self._connection: contextlib.ExitStack | None = None
        self._plan: ExecutionPlan | None = None
        self._running: list[str] = []
        self._log_lines: dict[str, int] = {}        # pod -> lines of its log already shown
        self._next_log = 0.0

    @property
    def stages(self) -> list["Stage"]:
        return list(self._plan.stages) if self._plan is not None else []

    def start(self, plan: ExecutionPlan) -> None:
        self.stop()
        self._plan = plan

    def ready(self) -> None:
        """The run's checks here (they read the data and the hyperparameters), then the cluster:
        reachable, the volume's claim present."""
        import importlib

        self._check_data_source()
        for function, kwargs in self._plan.checks if self._plan else ():
            module, _, name = function.partition(":")
            getattr(importlib.import_module(module), name)(**kwargs)
        execution = self.params.execution
        cluster = self._connect()
        if cluster.get("PersistentVolumeClaim", execution.namespace, execution.volume) is None:
            raise K8sDeployError(
                f"execution.volume must name a PersistentVolumeClaim in namespace {execution.namespace}. Got "
                f"{execution.volume!r}, which does not exist there, instead.", reason="NotFound",
                kind="PersistentVolumeClaim", namespace=execution.namespace, name=execution.volume,
                hint="create it on hostpath-storage whose folder is the runs folder (README, Beyond one machine).")
        if not self.image:
            from ..image import ensure_stage_image

            self.image = ensure_stage_image(self.params, log=self.log)

    def execute(self, stage: "Stage", run_dir: Path, parameters: dict[str, Any]) -> Outcome:
        execution = self.params.execution
        cluster = self._connect()
        notebook = executed_notebook(run_dir, stage)
        notebook.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(self._plan.notebooks if self._plan else _paths.notebooks_dir()) / stage.notebook,
                        notebook)             # the notebook the fingerprint hashed, where the pod finds it
        job = render_job(stage, run_dir, parameters, self.params, runs_dir=self.runs_dir, image=self.image)
        name = job["metadata"]["name"]
        started = time.perf_counter()
        cluster.create(job)
        self._running.append(name)
        self.log(f"  {stage.name:<9} Job {execution.namespace}/{name} (image {self.image})")
        outcome = self._wait(cluster, job, notebook, started)   # interrupted: stop() deletes the Job
        self._running.remove(name)
        return outcome

    def stop(self) -> None:
        """Delete the Jobs still running (a cancelled run), close the connection."""
        if self._cluster is not None:
            for name in list(self._running):
                with contextlib.suppress(MlopsKitError):
                    self._cluster.delete("Job", self.params.execution.namespace, name)
            self._running.clear()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._cluster = None
        self._plan = None

    # --- the parts -------------------------------------------------------------------

    def _check_data_source(self) -> None:
        source = self.params.data.source
        if source.startswith("sklearn:") or not any(s.name == "data" for s in self.stages):
            return
        if not Path(source).resolve().is_relative_to(self.runs_dir.resolve()):
            from ..errors import ParameterError, ParameterProblem

            raise ParameterError([ParameterProblem(
                "parameters", "data.source", "sklearn:<name> or a file inside the runs folder "
                f"{self.runs_dir} (the volume {self.params.execution.volume}, which the stage's pod mounts) when "
                "execution.mode is kubernetes", repr(source))])

    def _connect(self):
        if self._cluster is not None:
            return self._cluster
        from ..kube import Cluster

        client, description = self._api_client, "the given API client"
        if client is None:
            self._connection = contextlib.ExitStack()
            if getattr(self.params.server, "host", None):
                from ..server.kube import server_api_client

                client = self._connection.enter_context(server_api_client(self.params.server, log=self.log))
                description = f"the API of {self.params.server.host} through an SSH tunnel"
            else:
                from ..kube import load_api_client

                client, description = load_api_client()
                self._connection.callback(client.close)
        self._cluster = Cluster(client, description=description)
        return self._cluster

    def _wait(self, cluster, job: dict, notebook: Path, started: float) -> Outcome:
        execution = self.params.execution
        namespace, name = execution.namespace, job["metadata"]["name"]
        selector = {"job-name": name}          # the Job controller's label on its pods
        deadline = time.monotonic() + execution.timeout + 120      # the Job's own deadline comes first
        while True:
            live = cluster.get("Job", namespace, name) or {}
            ended = {c.get("type"): c for c in (live.get("status") or {}).get("conditions") or []
                     if c.get("status") == "True" and c.get("type") in ("Complete", "Failed")}
            seconds = round(time.perf_counter() - started, 3)
            pods = cluster.list_pods(namespace, selector)
            self._stream(cluster, namespace, pods, job["metadata"]["labels"][LABEL_STAGE], final=bool(ended))
            if "Complete" in ended:
                return Outcome("succeeded", seconds)
            if "Failed" in ended:
                return self._failed(ended["Failed"], pods, notebook, seconds)
            stuck = _cannot_start(pods)
            if stuck is not None:
                cluster.delete("Job", namespace, name)
                reason, message = stuck
                which = "execution.image" if execution.image else "the kit's stage image (execution.image empty)"
                return Outcome("failed", seconds, exception=reason, report=False,
                               detail=f"the stage's pod cannot start: {reason}: {message} ({which} "
                                      f"{job_image(job)}; is it imported into the cluster's containerd, or in a "
                                      "registry it can pull from?)")
            if time.monotonic() > deadline:
                cluster.delete("Job", namespace, name)
                return Outcome("failed", seconds, exception="Timeout", report=False,
                               detail=f"the Job did not end within execution.timeout {execution.timeout:g} s")
            time.sleep(self.poll)

    def _stream(self, cluster, namespace: str, pods: list[dict], stage: str, *, final: bool) -> None:
        """The new lines of the pods' logs (papermill's cell by cell progress and the cells'
        output), every few seconds and once more when the Job has ended."""
        if not final and time.monotonic() < self._next_log:
            return
        for pod in pods:
            name = (pod.get("metadata") or {}).get("name")
            running_or_ended = any((c.get("state") or {}).keys() & {"running", "terminated"}
                                   for c in (pod.get("status") or {}).get("containerStatuses") or [])
            if not name or not running_or_ended:
                continue
            self._next_log = time.monotonic() + LOG_EVERY
            text = cluster.pod_log(namespace, name, CONTAINER, previous=False, tail=None, quiet=True)
            lines = (text or "").splitlines()
            for line in lines[self._log_lines.get(name, 0):]:
                self.log(f"  {stage:<9} | {line}")
            self._log_lines[name] = max(len(lines), self._log_lines.get(name, 0))

    def _failed(self, condition: dict, pods: list[dict], notebook: Path, seconds: float) -> Outcome:
        from .local import _failing_cell

        execution = self.params.execution
        reason = condition.get("reason") or "Failed"
        ends = [_pod_end(pod) for pod in pods]
        for end in ends:
            if end.get("exit_code") in FAIL_AT_ONCE:
                said = _termination_message(end.get("message"))
                return Outcome("failed", seconds, exception=said.get("exception") or "CellError",
                               cell_index=said.get("cell_index", _failing_cell(notebook, default=None)),
                               detail=said.get("detail") or end.get("message") or "")
        attempts = len(ends)
        if reason == "DeadlineExceeded":
            return Outcome("failed", seconds, exception="DeadlineExceeded", report=False,
                           detail=f"the stage's Job ran longer than execution.timeout {execution.timeout:g} s")
        oom = [e for e in ends if e.get("reason") == "OOMKilled"]
        if oom:
            return Outcome("failed", seconds, exception="OOMKilled", report=False,
                           detail=f"the stage went over its memory limit {execution.memory} (execution.memory) "
                                  f"in {len(oom)} of {attempts} pods ({execution.retries} retries): raise "
                                  "execution.memory, or let the stage use less (data.plot_sample, the model)")
        evicted = [e for e in ends if e.get("reason") == "Evicted"]
        if evicted:
            return Outcome("failed", seconds, exception="Evicted", report=False,
                           detail=f"the stage's pod was evicted {len(evicted)} times of {attempts} "
                                  f"({execution.retries} retries): {evicted[-1].get('message', '')}")
        last = ends[-1] if ends else {}
        return Outcome("failed", seconds, exception=reason, report=False,
                       detail=f"the stage's Job failed ({reason}: {condition.get('message', '')}); last pod: exit "
                              f"code {last.get('exit_code')}, {last.get('reason')} {last.get('message') or ''}")


def _to_stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _pod_end(pod: dict) -> dict:
    """How a pod ended: exit code, reason and message of its stage container (or the pod's
    own reason, e.g. Evicted)."""
    status = pod.get("status") or {}
    end = {"reason": status.get("reason"), "message": status.get("message")}
    for container in status.get("containerStatuses") or []:
        if container.get("name") == CONTAINER:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated:
                end = {"exit_code": terminated.get("exitCode"), "reason": terminated.get("reason") or end["reason"],
                       "message": terminated.get("message") or end["message"]}
    return end


def _termination_message(text: str | None) -> dict:
    try:
        said = json.loads(text or "")
    except ValueError:
        return {}
    return said if isinstance(said, dict) else {}


def _cannot_start(pods: list[dict]) -> tuple[str, str] | None:
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _CANNOT_START:
                return waiting["reason"], waiting.get("message") or ""
    return None


def planned_jobs(loaded, *, stages: list[str] | None = None, reuse_from: str | None = None,
                 use_cache: bool = True) -> list[dict]:
    """The Jobs a run would create (the stages it would execute, not those the cache reuses),
    validated against the Kubernetes schema; nothing is created (``mlops-kit run --dry-run``)."""
    from .. import ledger, runner

    params = loaded.params
    if params.execution.mode != "kubernetes":
        raise MlopsKitError(f"--dry-run prints the Jobs of execution.mode kubernetes. Got execution.mode "
                            f"{params.execution.mode!r} instead.", hint="add --set execution.mode=kubernetes")
    run_dir = _paths.runs_dir() / ledger.new_run_id()
    image = params.execution.image or stage_image_ref(params)
    jobs = [render_job(plan.stage, run_dir, {**params.stage_parameters(plan.stage.section), "run_dir": str(run_dir)},
                       params, image=image)
            for plan in runner.explain(loaded, stages=stages, reuse_from=reuse_from, use_cache=use_cache)
            if plan.cached_from is None]
    validate_jobs(jobs, params.deploy.kubernetes_version)
    return jobs
