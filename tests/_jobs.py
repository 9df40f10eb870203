"""The Job controller of the FAKE API server (kmock; no tests here), for execution.mode kubernetes.

:class:`FakeJobController` plays the Job controller: for each Job created in the fake API it
makes pods one after another, runs each with ``run_pod(job, attempt)`` (the tests pass the
test kubelet, tests/_kubelet.py, which runs the pod for real in containerd) and applies the
Job's own ``backoffLimit`` and ``podFailurePolicy`` rules, read from the created object, to
the pod's end as Kubernetes does (first matching rule: FailJob, Ignore, Count; no rule:
Count), writing the pods' and the Job's status (conditions Complete / Failed with reason
PodFailurePolicy or BackoffLimitExceeded) for the executor to read.
"""

from __future__ import annotations

import asyncio
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
            status = {"phase": "Succeeded" if end.exit_code == 0 else "Failed",
                      "containerStatuses": [{"name": container, "state": {"terminated": {
                          "exitCode": end.exit_code, "reason": end.reason, "message": end.message}}}]}
            if end.reason == "Evicted":
                status.update(reason="Evicted", message="The node was low on resource: memory.")
            if end.disrupted:
                status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
            self.fake.objects[PODS, namespace, pod_name].patch({"status": status})
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
