"""Wait for a Deployment's rollout, as ``kubectl rollout status`` does, and explain failures.

Success: the controller has seen the new spec (``observedGeneration >= generation``), every
replica is updated, no old replica remains and every updated replica is available.
Failure: the ``Progressing`` condition says ``ProgressDeadlineExceeded``; or a new pod is
stuck in ``ErrImageNeverPull``, ``ImagePullBackOff``, ``InvalidImageName``,
``CreateContainerConfigError`` or ``CrashLoopBackOff`` (explained in plain words with the
likely fix and, for a crash, the container's last log lines); or ``timeout`` seconds pass.
"""

from __future__ import annotations

import time
from typing import Callable

from ...errors import K8sDeployError
from ...kube import Cluster
from ._render import CONTAINER, RELEASE_ID

Log = Callable[[str], None]

_IMAGE_IMPORT_HINT = ("import it into the containerd of every node that may run the pod (namespace k8s.io): "
                      "rerun 04_package with package.import_image: true, or `microk8s ctr image import "
                      "<archive>`; check with `microk8s ctr images ls | grep {repo}`. On a multi-node cluster "
                      "push it to a registry instead (package.registry: localhost:32000).")


def rollout_state(deployment: dict) -> tuple[bool, str]:
    """(done, message) like ``kubectl rollout status``; raises on ProgressDeadlineExceeded."""
    meta, spec, status = deployment.get("metadata", {}), deployment.get("spec", {}), deployment.get("status") or {}
    name = meta.get("name")
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False, f"Waiting for deployment {name!r} spec update to be observed..."
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            raise K8sDeployError(f"Deployment {meta.get('namespace')}/{name} exceeded its progress deadline "
                              f"({spec.get('progressDeadlineSeconds', 600)} s): {condition.get('message', '')}",
                              reason="ProgressDeadlineExceeded", kind="Deployment",
                              namespace=meta.get("namespace"), name=name,
                              hint="the new pods never became ready: `mlops-kit status` shows them; a startup "
                                   "probe that fails (model not loading) or missing resources are the usual causes.")
    desired = spec.get("replicas", 1)
    updated = status.get("updatedReplicas") or 0
    replicas = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    if updated < desired:
        return False, (f"Waiting for deployment {name!r} rollout to finish: {updated} out of {desired} new "
                       "replicas have been updated...")
    if replicas > updated:
        return False, (f"Waiting for deployment {name!r} rollout to finish: {replicas - updated} old replicas "
                       "are pending termination...")
    if available < updated:
        return False, (f"Waiting for deployment {name!r} rollout to finish: {available} of {updated} updated "
                       "replicas are available...")
    return True, f"deployment {name!r} successfully rolled out"


def wait_for_rollout(cluster: Cluster, namespace: str, name: str, *, release_id: str | None, timeout: float,
                     log: Log = print, poll: float = 2.0, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll until the rollout succeeds (return the Deployment) or fails (raise K8sDeployError)."""
    deadline = clock() + timeout
    last = None
    while True:
        deployment = cluster.get("Deployment", namespace, name)
        if deployment is None:
            raise K8sDeployError(f"Deployment {namespace}/{name} disappeared while waiting for its rollout.",
                              reason="NotFound", kind="Deployment", namespace=namespace, name=name)
        done, message = rollout_state(deployment)
        pod_note = check_pods(cluster, deployment, release_id)
        line = message + (f" ({pod_note})" if pod_note and not done else "")
        if line != last:
            log(line)
            last = line
        if done:
            return deployment
        if clock() > deadline:
            raise K8sDeployError(f"Deployment {namespace}/{name} did not finish rolling out within {timeout:g} s: "
                              f"{message}", reason="Timeout", kind="Deployment", namespace=namespace, name=name,
                              hint="raise deploy.rollout_timeout, or look at the pods with `mlops-kit status`.")
        sleep(poll)


def check_pods(cluster: Cluster, deployment: dict, release_id: str | None) -> str | None:
    """Raise K8sDeployError when a pod of this release is stuck for good; else a short note on the
    pods that are not ready yet (or None)."""
    meta = deployment.get("metadata", {})
    namespace = meta.get("namespace")
    selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not selector:
        return None
    pods = cluster.list_pods(namespace, selector)
    if release_id:
        pods = [p for p in pods if (p.get("metadata", {}).get("annotations") or {}).get(RELEASE_ID) == release_id]
    notes = []
    for pod in pods:
        pod_name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason:
                _fail_if_stuck(cluster, deployment, pod, cs, reason, waiting.get("message") or "")
                notes.append(f"pod {pod_name}: {reason}")
        if not statuses:
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    notes.append(f"pod {pod_name}: not scheduled: {cond.get('message', cond.get('reason', ''))}")
            if status.get("phase") and not notes:
                notes.append(f"pod {pod_name}: {status['phase']}")
    return "; ".join(notes) or None


def _fail_if_stuck(cluster: Cluster, deployment: dict, pod: dict, cs: dict, reason: str, message: str) -> None:
    meta = deployment["metadata"]
    namespace = meta.get("namespace")
    pod_name = pod["metadata"].get("name")
    image = cs.get("image") or _image_of(deployment)
    repo = image.split("@")[0].rsplit(":", 1)[0] if image else "<image>"
    policy = _pull_policy_of(deployment)
    fields = dict(reason=reason, kind="Pod", namespace=namespace, name=pod_name)
    detail = message
    if reason in ("ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"):
        event = _last_warning(cluster, namespace, pod_name)   # the kubelet's own words, e.g. "not found"
        detail = "; ".join(part for part in (message, event) if part)
    if reason == "ErrImageNeverPull":
        raise K8sDeployError(f"Pod {pod_name} cannot start: the image {image} is not on its node, and "
                          f"imagePullPolicy is Never, so the kubelet will not pull it.",
                          hint="the image was not imported into this node's containerd: "
                               + _IMAGE_IMPORT_HINT.format(repo=repo), **fields)
    if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
        if reason == "ErrImagePull":
            return   # the kubelet retries; ImagePullBackOff follows when it keeps failing
        raise K8sDeployError(f"Pod {pod_name} cannot pull the image {image} (imagePullPolicy {policy}): "
                          f"{detail or reason}",
                          hint=("an image imported into containerd is never pulled: if you imported it, its "
                                "name or digest differs from this reference (`microk8s ctr images ls | grep "
                                f"{repo}`), or the pull policy is wrong (Never for imported images); if it "
                                "comes from a registry, check the registry is reachable from the node. "
                                + "Otherwise " + _IMAGE_IMPORT_HINT.format(repo=repo)), **fields)
    if reason == "CreateContainerConfigError":
        raise K8sDeployError(f"Pod {pod_name} cannot be configured: {detail or reason}",
                          hint="a ConfigMap or Secret the pod reads is missing or lacks a key.", **fields)
    if reason == "CrashLoopBackOff":
        terminated = (cs.get("lastState") or {}).get("terminated") or {}
        logs = cluster.pod_log(namespace, pod_name, cs.get("name") or CONTAINER, previous=True, tail=20)
        how = ", ".join(f"{k} {terminated[k]}" for k in ("exitCode", "reason") if terminated.get(k) is not None)
        oom = terminated.get("reason") == "OOMKilled"
        raise K8sDeployError(
            f"Pod {pod_name} keeps crashing (restarted {cs.get('restartCount', 0)} times"
            f"{', ' + how if how else ''}). Its last log lines:\n{_indent(logs)}",
            logs=logs,
            hint=("the container ran out of memory: raise the memory limit in k8s/deployment.yaml." if oom else
                  "the server exits at start: the log above says why (a model that does not load, a wrong "
                  "setting). Try the same image on this machine: `mlops-kit deploy RUN_ID --target local`."),
            **fields)


def _last_warning(cluster: Cluster, namespace: str, pod_name: str) -> str:
    events = [e for e in cluster.list_events(namespace, pod_name) if e.get("type") == "Warning"]
    events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return events[-1].get("message", "") if events else ""


def _image_of(deployment: dict) -> str:
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    return next((c.get("image", "") for c in containers if c.get("name") == CONTAINER), containers[0].get("image", ""))


def _pull_policy_of(deployment: dict) -> str:
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    return next((c.get("imagePullPolicy", "IfNotPresent") for c in containers if c.get("name") == CONTAINER),
                "IfNotPresent")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in (text.rstrip() or "(no output)").splitlines())
