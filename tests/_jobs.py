"""The Job controller of the FAKE API server (kmock; no tests here), for execution.mode kubernetes.

:class:`FakeJobController` plays the Job controller: for each Job created in the fake API it
makes pods one after another, runs each with ``run_pod(job, attempt)`` (the tests pass the
test kubelet, tests/_kubelet.py, which runs the pod for real in containerd) and applies the
Job's own ``backoffLimit`` and ``podFailurePolicy`` rules, read from the created object, to
the pod's end as Kubernetes does (first matching rule: FailJob, Ignore, Count; no rule:
Count), writing the pods' and the Job's status (conditions Complete / Failed with reason
PodFailurePolicy or BackoffLimitExceeded) for the executor to read.

An Indexed Job (``completionMode: Indexed``) is played as Kubernetes plays it: ``completions``
indexes, at most ``parallelism`` pods at a time, each pod with the annotation and label
``batch.kubernetes.io/job-completion-index`` and the env ``JOB_COMPLETION_INDEX`` taken from
that annotation (``fieldRef``, as the controller adds it to the template); failures counted
per index against ``backoffLimitPerIndex`` (rule FailIndex: the index fails at once), the
status's ``completedIndexes`` / ``failedIndexes`` ("0,2-3") kept as indexes end; more failed
indexes than ``maxFailedIndexes`` fail the Job (MaxFailedIndexesExceeded) and stop its pods,
else the Job ends Failed (FailedIndexes) when every index ended and one failed, Complete
when none did. ``run_pod(job, attempt)`` then receives the pod's Job: its template is the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Callable

import kmock

JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
CLAIMS = kmock.resource("", "v1", "persistentvolumeclaims")


@dataclass
class PodEnd:
    exit_code: int
    reason: str = "Error"                  # Completed | Error | OOMKilled | Evicted
    message: str = ""
    disrupted: bool = False                # the pod got a DisruptionTarget condition (preempted, drained)


def serve_jobs(fake, namespace: str, claim: str) -> None:
    """Declare what the executor reads and writes; the claim exists (bound)."""
    fake.resources["batch/v1/jobs"] = {}
    fake.resources["v1/pods"] = {}
    fake.resources["v1/persistentvolumeclaims"] = {}
    fake.objects[CLAIMS, namespace, claim] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
        "spec": {"storageClassName": "microk8s-hostpath", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "10Gi"}}}, "status": {"phase": "Bound"}}


class FakeJobController:
    def __init__(self, fake, run_pod: Callable[[dict, int], PodEnd]):
        self.fake = fake
        self.run_pod = run_pod
        self.created: dict[str, float] = {}            # Job name -> time.time() when first seen
        self.pods: dict[str, list[PodEnd]] = {}        # Job name -> its pods' ends, in order
        self.indexed: dict[str, dict[int, list[PodEnd]]] = {}   # Indexed Job name -> index -> its pods' ends
        self._handled: set = set()
        self._task = None
        self._jobs: list[asyncio.Task] = []

    async def __aenter__(self):
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc):
        for task in [self._task, *self._jobs]:
            task.cancel()
        await asyncio.gather(self._task, *self._jobs, return_exceptions=True)

    async def _watch(self):
        while True:
            for key in list(self.fake.objects):
                if key[0] == JOBS and not self.fake.objects[key].deleted and key not in self._handled:
                    self._handled.add(key)
                    self.created[key[2]] = time.time()
                    self._jobs.append(asyncio.create_task(self._run(key)))
            await asyncio.sleep(0.005)

    async def _run(self, key):
        _, namespace, name = key
        job = self.fake.objects[key].raw
        spec = job["spec"]
        if spec.get("completionMode") == "Indexed":
            return await self._run_indexed(key, job)
        template = spec["template"]
        failures, attempt = 0, 0
        self.pods[name] = []
        while True:
            pod_name = f"{name}-{attempt}"
            self.fake.objects[PODS, namespace, pod_name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": namespace,
                             "labels": {**template["metadata"]["labels"], "job-name": name}},
                "status": {"phase": "Running", "containerStatuses": [
                    {"name": template["spec"]["containers"][0]["name"], "state": {"running": {}}}]}}
            end = await asyncio.to_thread(self.run_pod, job, attempt)
            self.pods[name].append(end)
            if (key not in self.fake.objects or self.fake.objects[key].deleted):
                return
            container = template["spec"]["containers"][0]["name"]
            self.fake.objects[PODS, namespace, pod_name].patch({"status": _pod_status(container, end)})
            if end.exit_code == 0:
                return self._end(key, "Complete", "", "")
            action = _action(spec.get("podFailurePolicy"), container, end)
            if action == "FailJob":
                return self._end(key, "Failed", "PodFailurePolicy",
                                 f"Container {container} for pod {namespace}/{pod_name} failed with exit code "
                                 f"{end.exit_code} matching FailJob rule")
            if action == "Count":
                failures += 1
            if failures > spec.get("backoffLimit", 6):
                return self._end(key, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            attempt += 1

    async def _run_indexed(self, key, job):
        _, namespace, name = key
        spec = job["spec"]
        completions, limit = spec["completions"], spec.get("backoffLimitPerIndex")
        most_failed = spec.get("maxFailedIndexes")
        container = spec["template"]["spec"]["containers"][0]["name"]
        slots = asyncio.Semaphore(spec.get("parallelism", 1))
        completed: set[int] = set()
        failed: set[int] = set()
        self.indexed[name] = {i: [] for i in range(completions)}
        self.pods[name] = []

        def publish():
            self.fake.objects[key].patch({"status": {"completedIndexes": _ranges(completed),
                                                     "failedIndexes": _ranges(failed),
                                                     "succeeded": len(completed), "failed": len(failed)}})

        async def one(index: int):
            async with slots:
                failures, attempt = 0, 0
                while True:
                    if self.fake.objects[key].deleted or (most_failed is not None and len(failed) > most_failed):
                        return
                    pod_job = _indexed_pod(job, index)
                    pod_name = f"{name}-{index}-{attempt}"
                    self.fake.objects[PODS, namespace, pod_name] = {
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {**pod_job["spec"]["template"]["metadata"], "name": pod_name,
                                     "namespace": namespace,
                                     "labels": {**pod_job["spec"]["template"]["metadata"]["labels"],
                                                "job-name": name}},
                        "status": {"phase": "Running", "containerStatuses": [
                            {"name": container, "state": {"running": {}}}]}}
                    end = await asyncio.to_thread(self.run_pod, pod_job, attempt)
                    self.indexed[name][index].append(end)
                    self.pods[name].append(end)
                    if self.fake.objects[key].deleted:
                        return
                    self.fake.objects[PODS, namespace, pod_name].patch({"status": _pod_status(container, end)})
                    action = "Succeeded" if end.exit_code == 0 else _action(spec.get("podFailurePolicy"), container,
                                                                               end)
                    if action == "FailJob":
                        raise _JobFailed("PodFailurePolicy", f"Container {container} for pod {namespace}/"
                                                             f"{pod_name} failed with exit code {end.exit_code} "
                                                             "matching FailJob rule")
                    failures += action == "Count"
                    if action == "Succeeded" or action == "FailIndex" or (limit is not None and failures > limit):
                        (completed if action == "Succeeded" else failed).add(index)
                        publish()
                        if most_failed is not None and len(failed) > most_failed:
                            raise _JobFailed("MaxFailedIndexesExceeded", "Job has exceeded maxFailedIndexes")
                        return
                    attempt += 1

        try:
            await asyncio.gather(*(one(i) for i in range(completions)))
        except _JobFailed as failure:
            return self._end(key, "Failed", failure.reason, failure.message)
        if self.fake.objects[key].deleted:
            return
        if failed:
            return self._end(key, "Failed", "FailedIndexes", "Job has failed indexes")
        return self._end(key, "Complete", "", "")

    def _end(self, key, kind, reason, message):
        self.fake.objects[key].patch({"status": {"conditions": [
            {"type": kind, "status": "True", "reason": reason, "message": message}]}})


def _action(policy: dict | None, container: str, end: PodEnd) -> str:
    """Kubernetes' reading of podFailurePolicy: the first rule that matches the failed pod."""
    for rule in (policy or {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if codes and codes.get("containerName", container) == container and end.reason != "Evicted":
            inside = end.exit_code in codes["values"]
            if inside == (codes["operator"] == "In"):
                return rule["action"]
        for condition in rule.get("onPodConditions") or []:
            if condition["type"] == "DisruptionTarget" and end.disrupted:
                return rule["action"]
    return "Count"


class _JobFailed(Exception):
    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message


def _pod_status(container: str, end: PodEnd) -> dict:
    status = {"phase": "Succeeded" if end.exit_code == 0 else "Failed",
              "containerStatuses": [{"name": container, "state": {"terminated": {
                  "exitCode": end.exit_code, "reason": end.reason, "message": end.message}}}]}
    if end.reason == "Evicted":
        status.update(reason="Evicted", message="The node was low on resource: memory.")
    if end.disrupted:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    return status


INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def _indexed_pod(job: dict, index: int) -> dict:
    """The Job with its template made index ``index``'s pod, as the Job controller makes it:
    annotation and label, and JOB_COMPLETION_INDEX from the annotation (a fieldRef)."""
    pod_job = copy.deepcopy(job)
    meta = pod_job["spec"]["template"].setdefault("metadata", {})
    meta.setdefault("annotations", {})[INDEX_KEY] = str(index)
    meta.setdefault("labels", {})[INDEX_KEY] = str(index)
    for container in pod_job["spec"]["template"]["spec"]["containers"]:
        container.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}})
    return pod_job


def _ranges(indexes: set[int]) -> str:
    """{0, 2, 3, 4} as "0,2-4" (the form of a Job's completedIndexes)."""
    parts, ordered = [], sorted(indexes)
    for i, value in enumerate(ordered):
        if i and value == ordered[i - 1] + 1:
            parts[-1][1] = value
        else:
            parts.append([value, value])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


@contextlib.asynccontextmanager
async def fake_job_api(namespace: str, claim: str, run_pod: Callable):
    """The fake API (kmock) serving Jobs in ``namespace`` with the claim ``claim``, and its Job
    controller ending each pod with ``run_pod(job, attempt)``: yields the controller, whose
    ``api`` is a Kubernetes client of that fake API."""
    from kubernetes import client as kclient
    from test_k8s_fakes import FakeApiServer

    async with FakeApiServer() as server, kmock.Server(server) as http:
        serve_jobs(server, namespace, claim)
        api = kclient.ApiClient(kclient.Configuration(host=str(http.url).rstrip("/")))
        async with FakeJobController(server, run_pod) as controller:
            controller.api = api
            yield controller


def kubelet_pods(containerd, workdir, *, claims: dict, images: dict) -> Callable:
    """``run_pod`` for :func:`fake_job_api`: each pod run for REAL by the test kubelet."""
    import _kubelet

    def run_pod(job: dict, attempt: int) -> PodEnd:
        end = _kubelet.run_job_pod(_kubelet.job_pod(job), containerd, workdir, claims=claims, images=images)
        return PodEnd(end.exit_code, end.reason, end.message)

    return run_pod


async def first_pod_never_pulls(controller) -> None:
    """Mark the first pod the controller makes as the kubelet does an image it cannot pull
    (``ErrImageNeverPull``): Pending, its container waiting."""
    while not any(k[0] == PODS for k in controller.fake.objects):
        await asyncio.sleep(0.005)
    key = next(k for k in controller.fake.objects if k[0] == PODS)
    controller.fake.objects[key].patch({"status": {"phase": "Pending", "containerStatuses": [
        {"name": "stage", "state": {"waiting": {"reason": "ErrImageNeverPull",
                                                "message": "image is not present with pull policy of Never"}}}]}})
