"""Deploy a run to Kubernetes, show what runs, roll back, remove.

``deploy`` renders ``k8s/`` for the run, validates, shows the diff, server-side applies in
order, waits for the rollout, smoke-tests through the Service with ``artifacts/examples.json``
and records the release; any failure in the wait or the smoke test restores the last good
release and waits for it. ``api_client`` (a ``kubernetes.client.ApiClient``) and ``smoke``
(``post(path, body) -> answer``) are the injectable I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ... import artifacts
from ...errors import K8sDeployError
from ...params import RunParams
from . import _diff, _releases, _render, _rollout, _validate
from ...kube import Cluster
from ...monitor.collect import admin_token_secret, token_in

Log = Callable[[str], None]
Post = Callable[[str, Any], Any]
PREDICT_PATH = "/predict"


def connect(api_client=None, *, log: Log | None = None) -> Cluster:
    """A :class:`Cluster` for ``api_client``, or for the kubeconfig found (see _kubeconfig)."""
    if isinstance(api_client, Cluster):
        return api_client
    if api_client is None:
        from ...kube import load_api_client

        api_client, description = load_api_client()
        if log:
            log(f"cluster: {api_client.configuration.host} from {description}")
        return Cluster(api_client, description=description)
    return Cluster(api_client)


def prepare(run_dir: Path, params: RunParams, *, environ=None) -> dict:
    """Everything a deploy of this run applies, rendered and validated (no cluster needed)."""
    run_dir = Path(run_dir)
    card = artifacts.MODEL_CARD.load(run_dir)
    image_info = artifacts.IMAGE.load(run_dir).to_json()
    examples = artifacts.EXAMPLES.load(run_dir)
    metrics = artifacts.METRICS.load_if_present(run_dir)
    image = _render.image_reference(image_info, source=str(artifacts.IMAGE.path(run_dir)))
    sha = card.sha256
    if len(sha) != 64:
        raise K8sDeployError(f"{artifacts.MODEL_CARD.path(run_dir)}: sha256 must be 64 hex digits. Got {sha!r} "
                             "instead.", reason="Invalid")
    values = _render.secret_values(params.deploy.secret_env, environ) if params.deploy.secret_env else None
    objects = _render.render(params, image=image, model_sha256=sha, run_id=run_dir.name, image_info=image_info,
                             secret_checksum=_render.secret_checksum(values) if values else None)
    _validate.validate(objects, params.deploy.kubernetes_version)
    secret = None
    if values:
        secret = _render.secret_object(params, values)
        _validate.validate([secret], params.deploy.kubernetes_version)
    return {"objects": objects, "secret": secret, "image": image, "image_info": image_info,
            "model_sha256": sha, "examples": examples, "metrics": metrics.metrics if metrics else {},
            "release_id": _render.release_id_of(objects), "run_id": run_dir.name}


def deploy(run_dir: Path, params: RunParams, *, dry_run: bool = False, log: Log = print, api_client=None,
           smoke: Post | None = None, force_conflicts: bool = False, environ=None, poll: float = 2.0) -> dict:
    """Deploy the run in ``run_dir``; the release record (also written to artifacts/release.json).

    Raises :class:`K8sDeployError` when the deploy fails (after rolling back when it can)."""
    run_dir = Path(run_dir)
    d = params.deploy
    plan = prepare(run_dir, params, environ=environ)
    objects, secret = plan["objects"], plan["secret"]
    log(f"release {plan['release_id']}: run {plan['run_id']}, image {plan['image']}")
    cluster = connect(api_client, log=log)
    admin_secret = _admin_token_secret(cluster, params)
    to_apply = _render.sort_for_apply(objects + [s for s in (secret, admin_secret) if s])
    changes = _diff.diff_objects(cluster, to_apply)
    log("changes:\n" + _diff.summary(changes))
    for change in changes:
        if change["diff"]:
            log(change["diff"].rstrip("\n"))
    if dry_run:
        log("dry run: nothing applied.")
        return {"dry_run": True, "release_id": plan["release_id"], "run_id": plan["run_id"], "image": plan["image"],
                "namespace": d.namespace, "name": d.name, "changes": changes,
                "manifests": _render.to_yaml(objects)}

    releases = _releases.read_history(cluster, d.namespace, d.name)
    record = _releases.new_release(
        releases, target="microk8s", release_id=plan["release_id"], run_id=plan["run_id"], image=plan["image"],
        digest=plan["image_info"].get("digest") or plan["image"].split("@", 1)[-1],
        model_sha256=plan["model_sha256"], metrics=plan["metrics"], namespace=d.namespace, name=d.name,
        status="pending", manifests=objects)
    try:
        apply_objects(cluster, to_apply, log=log, force=force_conflicts)
        wait(cluster, params, plan["release_id"], log=log, poll=poll)
        record["smoke"] = smoke_test(smoke or service_poster(cluster, params), plan["examples"], log=log)
    except K8sDeployError as failure:
        record.update(status="failed", reason=failure.reason, error=failure.message)
        releases.append(record)
        _releases.write_history(cluster, d.namespace, d.name, releases)
        restored = _restore_after_failure(cluster, params, releases, record, log=log, poll=poll)
        record["rolled_back_to"] = _releases.public(restored)
        _write_release(run_dir, record)
        rolled = (f" Rolled back to release {restored['revision']} (run {restored['run_id']})."
                  if restored else " No earlier good release to roll back to; the failed one is left in place "
                                   "for inspection (`mlops-kit undeploy` removes it).")
        raise K8sDeployError(failure.message + rolled, reason=failure.reason, kind=failure.kind,
                          namespace=failure.namespace, name=failure.name, status=failure.status,
                          logs=failure.logs, rolled_back_to=_releases.public(restored), hint=failure.hint) from None
    record.update(status="succeeded", endpoint=endpoint(cluster, params))
    releases.append(record)
    _releases.write_history(cluster, d.namespace, d.name, releases)
    _write_release(run_dir, record)
    log(f"release {record['revision']} is live: {record['endpoint']}")
    return _releases.public(record)


def _admin_token_secret(cluster: Cluster, params: RunParams) -> dict:
    """The Secret of the Deployment's admin token: the one in the cluster when it holds a valid
    token (the running pods read it at start: a new token would lock them out until they roll),
    else a new random one (``secrets.token_urlsafe``, 256 bits). Its value is never logged;
    the diff shows only whether it changed (``_diff``)."""
    import secrets

    d = params.deploy
    token = token_in(cluster.get("Secret", d.namespace, admin_token_secret(d.name)))
    secret = _render.admin_token_secret_object(params, token or secrets.token_urlsafe(32))
    _validate.validate([secret], d.kubernetes_version)
    return secret


def apply_objects(cluster: Cluster, objects: list[dict], *, log: Log, force: bool = False) -> None:
    for obj in objects:
        cluster.apply(obj, force=force)
        log(f"applied {obj['kind']}/{obj['metadata']['name']}")


def wait(cluster: Cluster, params: RunParams, release_id: str | None, *, log: Log, poll: float) -> dict:
    d = params.deploy
    return _rollout.wait_for_rollout(cluster, d.namespace, d.name, release_id=release_id,
                                     timeout=d.rollout_timeout, log=log, poll=poll)


def service_poster(cluster: Cluster, params: RunParams) -> Post:
    """POST through the Service (API server's service proxy: works for ClusterIP and NodePort)."""
    d = params.deploy
    return lambda path, body: cluster.service_post(d.namespace, d.name, d.port, path, body)


def smoke_test(post: Post, examples: artifacts.Examples, *, log: Log = print, attempts: int = 3,
               sleep: Callable[[float], None] | None = None) -> dict:
    """The shared smoke test (:func:`mlops_kit.deploy.base.smoke_test`) through the Service;
    its failure is a K8sDeployError with reason SmokeTestFailed (which rolls back)."""
    import time

    from ..base import SmokeTestFailed, smoke_test as shared_smoke_test

    try:
        return shared_smoke_test(post, examples, log=log, attempts=attempts, sleep=sleep or time.sleep)
    except SmokeTestFailed as exc:
        raise K8sDeployError(exc.message, reason="SmokeTestFailed", status=exc.status, hint=exc.hint) from None


def _restore_after_failure(cluster: Cluster, params: RunParams, releases: list[dict], failed: dict, *,
                           log: Log, poll: float) -> dict | None:
    good = _releases.last_good(releases, unlike=failed.get("release_id"))
    if good is None:
        log(f"release {failed['revision']} failed; no earlier good release to roll back to.")
        return None
    log(f"release {failed['revision']} failed ({failed.get('reason')}); rolling back to release "
        f"{good['revision']} (run {good['run_id']})")
    return _roll_to(cluster, params, releases, good, log=log, poll=poll, rollback_of=failed["revision"])


def _roll_to(cluster: Cluster, params: RunParams, releases: list[dict], good: dict, *, log: Log, poll: float,
             rollback_of: int | None) -> dict:
    d = params.deploy
    apply_objects(cluster, good["manifests"], log=log, force=True)
    entry = _releases.new_release(releases, **{k: v for k, v in good.items()
                                               if k not in ("revision", "time", "who", "status", "reason",
                                                            "error", "rolled_back_to", "rollback_of")},
                                  status="pending", rollback_of=rollback_of, restores=good["revision"])
    try:
        wait(cluster, params, good.get("release_id"), log=log, poll=poll)
    except K8sDeployError as exc:
        entry.update(status="failed", reason=exc.reason, error=exc.message)
        releases.append(entry)
        _releases.write_history(cluster, d.namespace, d.name, releases)
        raise K8sDeployError(f"The rollback to release {good['revision']} failed too: {exc.message}",
                          reason=exc.reason, kind=exc.kind, namespace=exc.namespace, name=exc.name,
                          logs=exc.logs, hint=exc.hint) from None
    entry.update(status="succeeded", endpoint=endpoint(cluster, params))
    releases.append(entry)
    _releases.write_history(cluster, d.namespace, d.name, releases)
    log(f"rolled back: release {entry['revision']} runs run {entry['run_id']}")
    return entry


def _write_release(run_dir: Path, record: dict) -> None:
    artifacts.RELEASE.save(run_dir, {"target": "microk8s", "smoke": None, **_releases.public(record)})


def endpoint(cluster: Cluster, params: RunParams, service: dict | None = None) -> str:
    d = params.deploy
    if service is None:
        service = cluster.get("Service", d.namespace, d.name) or {}
    spec = service.get("spec") or {}
    inside = f"http://{d.name}.{d.namespace}.svc:{d.port}"
    node_port = next((p.get("nodePort") for p in spec.get("ports") or [] if p.get("nodePort")), None)
    if spec.get("type") == "NodePort" and node_port:
        return f"http://<node-ip>:{node_port} (NodePort; in the cluster: {inside})"
    return f"{inside} (ClusterIP; from here: kubectl -n {d.namespace} port-forward svc/{d.name} {d.port})"


# --- status, rollback, undeploy ------------------------------------------------------------

def status(params: RunParams, *, api_client=None, log: Log | None = None) -> dict:
    """What runs: the Deployment's rollout, its pods, the Service endpoint and the release history."""
    d = params.deploy
    cluster = connect(api_client, log=log)
    deployment = cluster.get("Deployment", d.namespace, d.name)
    releases = _releases.read_history(cluster, d.namespace, d.name)
    result: dict[str, Any] = {"target": "microk8s", "namespace": d.namespace, "name": d.name, "deployed": deployment is not None,
                              "releases": [_releases.public(r) for r in releases],
                              "current": _releases.public(_releases.current(releases))}
    if deployment is None:
        result.update(pods=[], endpoint=None, rollout="not deployed")
        return result
    try:
        done, message = _rollout.rollout_state(deployment)
    except K8sDeployError as exc:
        done, message = False, exc.message
    st = deployment.get("status") or {}
    containers = deployment["spec"]["template"]["spec"].get("containers") or [{}]
    result.update(
        rollout=message, ready=done, image=containers[0].get("image"),
        replicas={"desired": deployment["spec"].get("replicas", 1), "updated": st.get("updatedReplicas", 0),
                  "ready": st.get("readyReplicas", 0), "available": st.get("availableReplicas", 0)},
        pods=[_pod_row(p) for p in cluster.list_pods(d.namespace, deployment["spec"]["selector"]["matchLabels"])],
        endpoint=endpoint(cluster, params))
    return result


def rollback(params: RunParams, *, to_revision: int | None = None, log: Log = print, api_client=None,
             poll: float = 2.0) -> dict:
    """Re-apply an earlier good release (default: the newest one unlike the current) and wait."""
    d = params.deploy
    cluster = connect(api_client, log=log)
    releases = _releases.read_history(cluster, d.namespace, d.name)
    if not releases:
        raise K8sDeployError(f"Nothing to roll back: no release history (ConfigMap {d.namespace}/"
                          f"{_releases.history_name(d.name)}) in the cluster.", reason="NotFound",
                          kind="ConfigMap", namespace=d.namespace, name=_releases.history_name(d.name),
                          hint="deploy a run first: `mlops-kit deploy RUN_ID --target microk8s`.")
    current = _releases.current(releases)
    if to_revision is not None:
        target = next((r for r in releases if r.get("revision") == to_revision), None)
        if target is None or target.get("status") != "succeeded":
            good = [r["revision"] for r in releases if r.get("status") == "succeeded"]
            raise K8sDeployError(f"to_revision must be the revision of a succeeded release ({good}). "
                              f"Got {to_revision} instead.", reason="NotFound")
    else:
        target = _releases.last_good(releases, unlike=current.get("release_id") if current else None)
        if target is None:
            raise K8sDeployError("Nothing to roll back to: no earlier succeeded release differs from the current one.",
                              reason="NotFound", hint="`mlops-kit status` lists the releases.")
    return _releases.public(_roll_to(cluster, params, releases, target, log=log, poll=poll, rollback_of=None))


def undeploy(params: RunParams, *, delete_namespace: bool = False, log: Log = print, api_client=None) -> dict:
    """Delete what the kit created (Deployment, Service, ConfigMaps, Secret; the namespace on request)."""
    d = params.deploy
    cluster = connect(api_client, log=log)
    targets = [("Deployment", d.name), ("Service", d.name), ("ConfigMap", f"{d.name}-config"),
               ("Secret", f"{d.name}-secrets"), ("Secret", admin_token_secret(d.name)),
               ("ConfigMap", _releases.history_name(d.name))]
    deleted, absent = [], []
    for kind, name in targets:
        (deleted if cluster.delete(kind, d.namespace, name) else absent).append(f"{kind}/{name}")
    if delete_namespace:
        (deleted if cluster.delete("Namespace", None, d.namespace) else absent).append(f"Namespace/{d.namespace}")
    for item in deleted:
        log(f"deleted {item}")
    if not deleted:
        log(f"nothing deployed as {d.name!r} in namespace {d.namespace!r}")
    return {"namespace": d.namespace, "name": d.name, "deleted": deleted, "absent": absent}


def _pod_row(pod: dict) -> dict:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    waiting = [((cs.get("state") or {}).get("waiting") or {}).get("reason") for cs in statuses]
    return {"name": pod.get("metadata", {}).get("name"), "phase": status.get("phase"),
            "ready": bool(statuses) and all(cs.get("ready") for cs in statuses),
            "restarts": sum(cs.get("restartCount", 0) for cs in statuses),
            "reason": next((w for w in waiting if w), None),
            "release_id": (pod.get("metadata", {}).get("annotations") or {}).get(_render.RELEASE_ID)}
