"""Helpers for the deploy tests (this module holds no tests): a FAKE Kubernetes API server and a fake run.

``FakeApiServer`` is kmock's KubernetesEmulator - an in-memory HTTP fake of the Kubernetes
API, NOT a real cluster - made a little more like a real API server in two ways the deploy
logic relies on: a server-side apply of a missing object creates it, and a change to a
Deployment's spec bumps ``metadata.generation``. ``FakeController`` plays the Deployment
controller and kubelet: when a Deployment's generation changes it writes the status, pods
and events that the scenario of that release asks for.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shutil
from pathlib import Path

import kmock

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
PODS = kmock.resource("", "v1", "pods")
EVENTS = kmock.resource("", "v1", "events")
RELEASE_ID = "mlops-kit/release-id"


class FakeApiServer(kmock.KubernetesEmulator):
    """A fake API server (kmock), with server-side apply that creates and Deployment generations."""

    async def _handle(self, request):
        deployment_key = None
        before = None
        if request.resource is not None and request.name and request.action == kmock.action.UPDATE:
            key = (request.resource, request.namespace, request.name)
            content_type = request.headers.get("Content-Type", "")
            if "apply-patch" in content_type and (key not in self.objects or self.objects[key].deleted):
                self.objects[key] = {"apiVersion": request.data.get("apiVersion"), "kind": request.data.get("kind"),
                                     "metadata": {"name": request.name, "namespace": request.namespace}}
            if request.resource == DEPLOYMENTS and not request.subresource:
                deployment_key = key
                before = copy.deepcopy(self.objects[key].raw.get("spec")) if key in self.objects and \
                    not self.objects[key].deleted else None
        response = await super()._handle(request)
        if deployment_key is not None and deployment_key in self.objects and not self.objects[deployment_key].deleted:
            obj = self.objects[deployment_key]
            if obj.raw.get("spec") != before:
                generation = (obj.raw.get("metadata") or {}).get("generation") or 0
                obj.patch({"metadata": {"generation": generation + 1}})
        return response


class FakeController:
    """Drives Deployment status, pods and events like the controller and kubelet would.

    ``scenarios`` maps a release id to ``ok`` (default), ``deadline``, ``never-pull``,
    ``pull-backoff`` or ``crash``."""

    def __init__(self, fake: FakeApiServer, scenarios: dict[str, str] | None = None):
        self.fake = fake
        self.scenarios = scenarios or {}
        self.seen: list[tuple[str, str]] = []    # (release id, scenario) in the order rolled out
        self._task = None

    async def __aenter__(self):
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self):
        while True:
            for key in list(self.fake.objects):
                resource, namespace, name = key
                if resource != DEPLOYMENTS or self.fake.objects[key].deleted:
                    continue
                obj = self.fake.objects[key].raw
                generation = obj.get("metadata", {}).get("generation")
                if generation is not None and (obj.get("status") or {}).get("observedGeneration") != generation:
                    self._roll(key, obj, generation)
            await asyncio.sleep(0.005)

    def _roll(self, key, obj, generation):
        _, namespace, name = key
        template = obj["spec"]["template"]
        release = template["metadata"]["annotations"][RELEASE_ID]
        scenario = self.scenarios.get(release, "ok")
        self.seen.append((release, scenario))
        replicas = obj["spec"].get("replicas", 1)
        image = template["spec"]["containers"][0]["image"]
        labels = template["metadata"]["labels"]
        old = [k for k in self.fake.objects if k[0] == PODS and k[1] == namespace and not self.fake.objects[k].deleted]
        pod_name = f"{name}-{release[:8]}-{generation}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": namespace, "labels": dict(labels),
                            "annotations": {RELEASE_ID: release}},
               "status": {"phase": "Running", "containerStatuses": [
                   {"name": "server", "image": image, "ready": True, "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}
        status = {"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                  "readyReplicas": replicas, "availableReplicas": replicas,
                  "conditions": [{"type": "Available", "status": "True"},
                                 {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
        failing = {"observedGeneration": generation, "replicas": replicas + 1, "updatedReplicas": 1,
                   "readyReplicas": replicas, "availableReplicas": replicas,
                   "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}
        cs = pod["status"]["containerStatuses"][0]
        if scenario == "ok":
            for k in old:
                self.fake.objects[k].delete()
        elif scenario == "deadline":
            status = failing
            status["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                     "message": f'ReplicaSet "{name}-x" has timed out progressing.'}]
            pod["status"] = {"phase": "Running", "containerStatuses": [
                {"name": "server", "image": image, "ready": False, "restartCount": 0,
                 "state": {"running": {}}}]}
        elif scenario == "never-pull":
            status = failing
            pod["status"]["phase"] = "Pending"
            cs.update(ready=False, state={"waiting": {"reason": "ErrImageNeverPull", "message":
                      f'Container image "{image}" is not present with pull policy of Never'}})
        elif scenario == "pull-backoff":
            status = failing
            pod["status"]["phase"] = "Pending"
            cs.update(ready=False, state={"waiting": {"reason": "ImagePullBackOff",
                                                      "message": f'Back-off pulling image "{image}"'}})
            self.fake.objects[EVENTS, namespace, f"{pod_name}.1"] = {
                "apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": "Failed",
                "metadata": {"name": f"{pod_name}.1", "namespace": namespace},
                "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": namespace},
                "message": f'Failed to pull image "{image}": docker.io/{image}: not found',
                "lastTimestamp": "2026-01-01T00:00:01Z"}
        elif scenario == "crash":
            status = failing
            cs.update(ready=False, restartCount=3,
                      state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
                      lastState={"terminated": {"exitCode": 1, "reason": "Error"}})
        else:
            raise AssertionError(f"unknown scenario {scenario!r}")
        self.fake.objects[PODS, namespace, pod_name] = pod
        self.fake.objects[key].patch({"status": status})


_TRAINED: dict[str, Path] = {}


def trained_model_dir() -> Path:
    """A real model folder (01_data + 02_train's producers, in-process), trained once per session."""
    if "dir" not in _TRAINED:
        import tempfile

        from conftest import train_into

        _TRAINED["dir"] = train_into(Path(tempfile.mkdtemp(prefix="mk-k8s-model-")), "sklearn:breast_cancer",
                                     "target")
    return _TRAINED["dir"]


def make_run(runs_dir: Path, run_id: str, *, digest_char: str = "a", flip_predictions: bool = False,
             examples: int = 3) -> Path:
    """A run folder with what 05_deploy reads, written by the real producers: the data, train
    and evaluate stages' functions (a real model) and the catalog's image record (the image
    itself is not built: the cluster is fake). ``flip_predictions`` records answers the model
    does not give, so the smoke test must fail."""
    from mlops_kit import artifacts, data, evaluate, model_io, train

    run = runs_dir / run_id
    shutil.copytree(trained_model_dir(), run / "artifacts")
    recorded = artifacts.EXAMPLES.load(run)
    predictions = recorded.predictions[:examples]
    if flip_predictions:
        predictions = [1 - p for p in predictions]
    artifacts.EXAMPLES.save(run, {"records": recorded.records[:examples], "predictions": predictions})
    _, test, schema = data.load_splits(run / "artifacts")
    X, y = train.features_and_target(test, schema)
    metrics = evaluate.compute_metrics(model_io.load_model(run / "artifacts"), X, y, schema["task"])
    evaluate.save_metrics(run / "artifacts", schema["task"], metrics, evaluate.check_gate(metrics, {}, schema["task"]),
                          data_fingerprint=schema.get("fingerprint"), model="logistic_regression")
    artifacts.IMAGE.save(run, {"ref": f"mlops-kit/model:{run_id}", "tag": run_id, "image": "mlops-kit/model",
                               "digest": "sha256:" + digest_char * 64, "run_id": run_id, "builder": "layers",
                               "content_digest": digest_char * 64, "imported": {"containerd": "microk8s"},
                               "created": "2026-01-01T00:00:00Z"})
    return run


def proxy_to_model_server(fake, model_dir: Path | None = None) -> None:
    """The fake cluster's Service proxy forwards ``POST .../proxy/predict`` to the REAL model
    server app (mlops_kit.serving, in-process through httpx's ASGI transport) of the model the
    runs were made from: the deploy's smoke request meets the real consumer."""
    import httpx

    from mlops_kit.serving.app import create_app

    app = create_app(model_dir or trained_model_dir())

    async def forward(request):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model-server") as http:
            answer = await http.post("/predict", content=request.body or b"",
                                     headers={"Content-Type": "application/json"})
        return kmock.Response(status=answer.status_code, payload=answer.json())

    fake["post", PROXY_PREDICT] << forward


PROXY_PREDICT = re.compile(r"/api/v1/namespaces/[^/]+/services/[^/]+/proxy/predict")


NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces/[^/]+$")


def serve_namespaces(fake: FakeApiServer) -> dict[str, dict]:
    """kmock reads /api/v1/namespaces/NAME as a namespace prefix, not as the Namespace object,
    so the fake serves Namespace objects from this dict (get, server-side apply, delete)."""
    namespaces: dict[str, dict] = {}

    def name_of(request) -> str:
        return request.url.path.rsplit("/", 1)[-1]

    def get(request):
        if name_of(request) not in namespaces:
            raise kmock.KubernetesObjectNotFoundError()
        return namespaces[name_of(request)]

    def apply(request):
        current = namespaces.setdefault(name_of(request), {})
        current.update(request.data)
        return current

    def delete(request):
        if namespaces.pop(name_of(request), None) is None:
            raise kmock.KubernetesObjectNotFoundError()
        return {"kind": "Status", "status": "Success"}

    fake["get", NAMESPACE_PATH] << get
    fake["patch", NAMESPACE_PATH] << apply
    fake["delete", NAMESPACE_PATH] << delete
    return namespaces
