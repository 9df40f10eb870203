"""The deploy logic against a FAKE Kubernetes API server (kmock) over real HTTP.

No API server can run on these machines (see docs/microk8s.md for the real-cluster suite),
so these tests talk, with the official ``kubernetes`` client, to kmock's in-memory fake of
the Kubernetes API; a fake controller (tests/test_k8s_fakes.py) writes the Deployment status,
pods and events a real controller and kubelet would. What the fake cannot do (merge
strategies, admission, real rollouts) is covered by assertions on the requests sent and by
the ``cluster`` suite.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re

import pytest
import pytest_asyncio

kmock = pytest.importorskip("kmock")
from kubernetes import client as kclient  # noqa: E402

from mlops_kit.deploy import k8s  # noqa: E402
from mlops_kit.errors import K8sDeployError, MlopsKitError  # noqa: E402
from mlops_kit.params import RunParams  # noqa: E402

from test_k8s_fakes import DEPLOYMENTS, PROXY_PREDICT, FakeApiServer, FakeController, make_run, proxy_to_model_server, serve_namespaces  # noqa: E402

NS = "mk-test"


@pytest_asyncio.fixture
async def fake():
    """A fake Kubernetes API server (kmock) on 127.0.0.1, with pods and events served."""
    async with FakeApiServer() as server, kmock.Server(server) as http:
        server.resources["v1/pods"] = {}
        server.resources["v1/events"] = {}
        server.namespaces = serve_namespaces(server)
        server["get", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] << (
            b"Loading model from /app/model\nTraceback (most recent call last):\n"
            b"mlops_kit.errors.ArtifactError: model.skops sha256 mismatch\n")
        server.url_for_client = str(http.url).rstrip("/")
        yield server


def api_client(fake) -> kclient.ApiClient:
    return kclient.ApiClient(kclient.Configuration(host=fake.url_for_client))


def params(**deploy) -> RunParams:
    # rollout_timeout only guards against a hung test: every scenario ends by itself
    return RunParams(deploy={"target": "microk8s", "namespace": NS, "rollout_timeout": 60, **deploy})


def writes(fake):
    return [r for r in list(fake) if r.method in ("PATCH", "POST", "PUT", "DELETE")
            and not PROXY_PREDICT.match(r.url.path)]


async def run(fn, *args, **kwargs):
    # The sync kubernetes client must not block the event loop the fake server runs on.
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.mark.asyncio
async def test_first_deploy_applies_in_order_waits_smoke_tests_and_records(fake, _isolated_runs):
    run_dir = make_run(_isolated_runs, "run-1")
    proxy_to_model_server(fake)
    lines: list[str] = []
    async with FakeController(fake) as controller:
        release = await run(k8s.deploy, run_dir, params(), api_client=api_client(fake), log=lines.append, poll=0.01)

    assert release["status"] == "succeeded" and release["revision"] == 1
    assert release["run_id"] == "run-1" and release["image"] == "mlops-kit/model:run-1@sha256:" + "a" * 64
    recorded_metrics = json.loads((run_dir / "artifacts" / "metrics.json").read_text())["metrics"]
    assert release["metrics"] == recorded_metrics and release["metrics"]["accuracy"] > 0.9 and "@" in release["who"]
    assert json.loads((run_dir / "artifacts" / "release.json").read_text()) == release
    assert controller.seen == [(release["release_id"], "ok")]
    assert any("successfully rolled out" in line for line in lines)
    assert any("smoke test: 3 predictions match" in line for line in lines)

    applied = [r for r in writes(fake) if r.method == "PATCH"]
    kinds = [r.data["kind"] for r in applied]
    # the Secret: the admin token (the request log's port), before the pods that read it; last: release history
    assert kinds == ["Namespace", "Secret", "ConfigMap", "Service", "Deployment", "ConfigMap"]
    assert applied[1].data["metadata"]["name"] == "model-server-admin-token"
    for request in applied:
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.params["fieldManager"] == "mlops-kit"
        assert request.params.get("force") in (None, "false", "False")
    deployment = applied[4].data
    assert deployment["metadata"]["namespace"] == NS
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith("@sha256:" + "a" * 64)
    assert container["imagePullPolicy"] == "Never"      # imported into containerd, no registry
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    card = json.loads((run_dir / "artifacts" / "model_card.json").read_text())
    assert annotations["mlops-kit/model-sha256"] == card["sha256"] and annotations["mlops-kit/run-id"] == "run-1"

    smoke = [r for r in list(fake) if r.method == "POST" and PROXY_PREDICT.match(r.url.path)]
    # the one smoke body: the recorded records as a JSON list (the real server answered it above)
    recorded = json.loads((run_dir / "artifacts" / "examples.json").read_text())
    assert len(smoke) == 1 and smoke[0].data == recorded["records"]
    assert "/services/model-server:8080/proxy/predict" in smoke[0].url.path

    history = fake.objects[kmock.resource("", "v1", "configmaps"), NS, "model-server-releases"].raw
    releases = json.loads(history["data"]["releases.json"])
    assert [r["status"] for r in releases] == ["succeeded"]
    assert releases[0]["manifests"][-1]["kind"] == "Deployment"


@pytest.mark.asyncio
async def test_second_deploy_shows_diff_and_unchanged_redeploy(fake, _isolated_runs):
    first, second = make_run(_isolated_runs, "run-1"), make_run(_isolated_runs, "run-2", digest_char="c")
    proxy_to_model_server(fake)
    async with FakeController(fake):
        await run(k8s.deploy, first, params(), api_client=api_client(fake), log=lambda _: None, poll=0.01)
        lines: list[str] = []
        release = await run(k8s.deploy, second, params(replicas=2), api_client=api_client(fake),
                            log=lines.append, poll=0.01)
    text = "\n".join(lines)
    assert "update    Deployment/model-server" in text and "unchanged ConfigMap/model-server-config" in text
    assert "-  replicas: 1" in text and "+  replicas: 2" in text
    assert release["revision"] == 2
    status = await run(k8s.status, params(), api_client=api_client(fake))
    assert status["deployed"] and status["ready"] and status["current"]["run_id"] == "run-2"
    assert [r["run_id"] for r in status["releases"]] == ["run-1", "run-2"]
    assert [p["release_id"] for p in status["pods"]] == [release["release_id"]]


@pytest.mark.asyncio
async def test_dry_run_renders_validates_and_diffs_but_writes_nothing(fake, _isolated_runs):
    run_dir = make_run(_isolated_runs, "run-1")
    result = await run(k8s.deploy, run_dir, params(), api_client=api_client(fake), dry_run=True,
                       log=lambda _: None)
    assert result["dry_run"] and {c["action"] for c in result["changes"]} == {"create"}
    assert "kind: Deployment" in result["manifests"]
    assert writes(fake) == []
    assert not (run_dir / "artifacts" / "release.json").exists()


@pytest.mark.parametrize("scenario, reason, words", [
    ("deadline", "ProgressDeadlineExceeded", "exceeded its progress deadline"),
    ("never-pull", "ErrImageNeverPull", "imagePullPolicy is Never"),
    ("pull-backoff", "ImagePullBackOff", "not found"),
    ("crash", "CrashLoopBackOff", "sha256 mismatch"),
])
@pytest.mark.asyncio
async def test_failed_rollout_rolls_back_to_last_good_release(fake, _isolated_runs, scenario, reason, words):
    good, bad = make_run(_isolated_runs, "run-good"), make_run(_isolated_runs, "run-bad", digest_char="d")
    proxy_to_model_server(fake)
    async with FakeController(fake) as controller:
        first = await run(k8s.deploy, good, params(), api_client=api_client(fake), log=lambda _: None, poll=0.01)
        bad_release = k8s.prepare(bad, params())["release_id"]
        controller.scenarios[bad_release] = scenario
        lines: list[str] = []
        with pytest.raises(K8sDeployError) as caught:
            await run(k8s.deploy, bad, params(), api_client=api_client(fake), log=lines.append, poll=0.01)

    err = caught.value
    assert err.reason == reason and words in str(err)
    assert "Rolled back to release 3 (run run-good)" in str(err)
    assert err.rolled_back_to["run_id"] == "run-good" and err.rolled_back_to["restores"] == first["revision"]
    assert [s for _, s in controller.seen] == ["ok", scenario, "ok"]
    if scenario in ("never-pull", "pull-backoff"):
        assert "import" in err.hint and "microk8s ctr" in err.hint
    if scenario == "crash":
        assert "ArtifactError" in err.logs and "ArtifactError" in str(err)
    # the Deployment runs the good image again; history says what happened
    deployment = fake.objects[DEPLOYMENTS, NS, "model-server"].raw
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith("a" * 64)
    status = await run(k8s.status, params(), api_client=api_client(fake))
    assert [(r["run_id"], r["status"]) for r in status["releases"]] == [
        ("run-good", "succeeded"), ("run-bad", "failed"), ("run-good", "succeeded")]
    assert status["releases"][1]["reason"] == reason
    record = json.loads((bad / "artifacts" / "release.json").read_text())
    assert record["status"] == "failed" and record["rolled_back_to"]["revision"] == 3


@pytest.mark.asyncio
async def test_wrong_smoke_predictions_roll_back(fake, _isolated_runs):
    good, bad = make_run(_isolated_runs, "run-good"), make_run(_isolated_runs, "run-bad", digest_char="e",
                                                                flip_predictions=True)
    proxy_to_model_server(fake)
    async with FakeController(fake) as controller:
        await run(k8s.deploy, good, params(), api_client=api_client(fake), log=lambda _: None, poll=0.01)
        with pytest.raises(K8sDeployError) as caught:
            await run(k8s.deploy, bad, params(), api_client=api_client(fake), log=lambda _: None, poll=0.01)
    assert caught.value.reason == "SmokeTestFailed"
    assert re.search(r"prediction 0 must be (\d) \(recorded at training\)\. Got (?!\1)\d instead", str(caught.value))
    assert [s for _, s in controller.seen] == ["ok", "ok", "ok"] and caught.value.rolled_back_to


@pytest.mark.asyncio
async def test_injected_smoke_call_and_first_deploy_failure_without_earlier_release(fake, _isolated_runs):
    run_dir = make_run(_isolated_runs, "run-1")
    calls = []

    def post(path, body):
        calls.append((path, body))
        return {"predictions": json.loads((run_dir / "artifacts" / "examples.json").read_text())["predictions"]}

    async with FakeController(fake) as controller:
        release = await run(k8s.deploy, run_dir, params(), api_client=api_client(fake), smoke=post,
                            log=lambda _: None, poll=0.01)
        assert calls[0][0] == "/predict" and len(calls[0][1]) == 3 and release["status"] == "succeeded"

        other = make_run(_isolated_runs, "run-2", digest_char="f")
        controller.scenarios[k8s.prepare(other, params(namespace="mk-other"))["release_id"]] = "crash"
        with pytest.raises(K8sDeployError) as caught:
            await run(k8s.deploy, other, params(namespace="mk-other"), api_client=api_client(fake), smoke=post,
                      log=lambda _: None, poll=0.01)
    assert caught.value.reason == "CrashLoopBackOff"
    assert "No earlier good release" in str(caught.value) and caught.value.rolled_back_to is None


@pytest.mark.asyncio
async def test_rollback_command_and_undeploy(fake, _isolated_runs):
    proxy_to_model_server(fake)
    async with FakeController(fake):
        await run(k8s.deploy, make_run(_isolated_runs, "run-1"), params(), api_client=api_client(fake),
                  log=lambda _: None, poll=0.01)
        await run(k8s.deploy, make_run(_isolated_runs, "run-2", digest_char="9"), params(),
                  api_client=api_client(fake), log=lambda _: None, poll=0.01)
        back = await run(k8s.rollback, params(), api_client=api_client(fake), log=lambda _: None, poll=0.01)
        assert back["run_id"] == "run-1" and back["restores"] == 1 and back["revision"] == 3
        again = await run(k8s.rollback, params(), api_client=api_client(fake), log=lambda _: None, poll=0.01)
        assert again["run_id"] == "run-2"
        with pytest.raises(K8sDeployError, match=r"to_revision must be the revision of a succeeded release"):
            await run(k8s.rollback, params(), to_revision=42, api_client=api_client(fake), log=lambda _: None)

    removed = await run(k8s.undeploy, params(), delete_namespace=True, api_client=api_client(fake),
                        log=lambda _: None)
    assert removed["deleted"] == ["Deployment/model-server", "Service/model-server", "ConfigMap/model-server-config",
                                  "Secret/model-server-admin-token", "ConfigMap/model-server-releases",
                                  "Namespace/mk-test"]
    assert removed["absent"] == ["Secret/model-server-secrets"]
    again = await run(k8s.undeploy, params(), api_client=api_client(fake), log=lambda _: None)
    assert again["deleted"] == []
    status = await run(k8s.status, params(), api_client=api_client(fake))
    assert status["deployed"] is False and status["releases"] == []


@pytest.mark.asyncio
async def test_not_found_rollback_without_history(fake):
    with pytest.raises(K8sDeployError) as caught:
        await run(k8s.rollback, params(), api_client=api_client(fake), log=lambda _: None)
    assert caught.value.reason == "NotFound" and "no release history" in str(caught.value)


@pytest.mark.asyncio
async def test_conflict_is_a_plain_error_naming_the_fields(fake, _isolated_runs):
    fake["patch", re.compile(r"/apis/apps/v1/namespaces/[^/]+/deployments/.*")] << kmock.KubernetesError(
        status=409, reason="Conflict",
        message='Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas')
    with pytest.raises(K8sDeployError) as caught:
        await run(k8s.deploy, make_run(_isolated_runs, "run-1"), params(), api_client=api_client(fake),
                  log=lambda _: None)
    err = caught.value
    assert err.reason == "Conflict" and err.status == 409 and err.kind == "Deployment"
    assert "kubectl-edit" in str(err) and "--force-conflicts" in err.hint
    assert "Traceback" not in str(err)


@pytest.mark.asyncio
async def test_force_conflicts_sends_force(fake, _isolated_runs):
    proxy_to_model_server(fake)
    async with FakeController(fake):
        await run(k8s.deploy, make_run(_isolated_runs, "run-1"), params(), api_client=api_client(fake),
                  log=lambda _: None, poll=0.01, force_conflicts=True)
    patches = [r for r in writes(fake) if r.method == "PATCH" and r.data.get("kind") == "Deployment"]
    assert patches[0].params["force"] in ("true", "True")


@pytest.mark.asyncio
async def test_forbidden_is_a_plain_error(fake, _isolated_runs):
    fake["get", re.compile(r"/apis/apps/v1/namespaces/[^/]+/deployments/.*")] << kmock.KubernetesError(
        status=403, reason="Forbidden",
        message='deployments.apps "model-server" is forbidden: User "alice" cannot get resource "deployments"')
    with pytest.raises(K8sDeployError) as caught:
        await run(k8s.deploy, make_run(_isolated_runs, "run-1"), params(), api_client=api_client(fake),
                  log=lambda _: None)
    assert caught.value.reason == "Forbidden" and "User \"alice\"" in str(caught.value)
    assert "RBAC" in caught.value.hint


def test_unreachable_cluster_is_a_plain_error(_isolated_runs):
    import socket

    with socket.socket() as s:       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configuration = kclient.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    with pytest.raises(K8sDeployError) as caught:
        k8s.status(params(), api_client=kclient.ApiClient(configuration))
    assert caught.value.reason == "Unreachable" and isinstance(caught.value, MlopsKitError)
    assert f"127.0.0.1:{port} cannot be reached" in str(caught.value) and "microk8s status" in caught.value.hint


@pytest.mark.asyncio
async def test_secret_values_go_only_into_the_secret(fake, _isolated_runs, monkeypatch):
    value = "s3cr3t-Value-9f2e"
    monkeypatch.setenv("MODEL_API_TOKEN", value)
    file = _isolated_runs / "token.txt"
    file.write_text("file-secret-7c1d\n")
    monkeypatch.setenv("OTHER_TOKEN_FILE", str(file))
    proxy_to_model_server(fake)
    p = params(secret_env=["MODEL_API_TOKEN", "OTHER_TOKEN"])
    run_dir = make_run(_isolated_runs, "run-1")
    lines: list[str] = []
    async with FakeController(fake):
        await run(k8s.deploy, run_dir, p, api_client=api_client(fake), log=lines.append, poll=0.01)
        dry = await run(k8s.deploy, run_dir, p, api_client=api_client(fake), log=lines.append, dry_run=True)

    secrets = [value, "file-secret-7c1d"]
    encoded = [base64.b64encode(s.encode()).decode() for s in secrets]
    secret = fake.objects[kmock.resource("", "v1", "secrets"), NS, "model-server-secrets"].raw
    assert [base64.b64decode(secret["data"][k]).decode() for k in ("MODEL_API_TOKEN", "OTHER_TOKEN")] == secrets
    places = {
        "log": "\n".join(lines),
        "release.json": (run_dir / "artifacts" / "release.json").read_text(),
        "dry-run result": json.dumps(dry, default=str),
        "rendered": json.dumps(k8s.prepare(run_dir, p)["objects"]),
        "config maps": json.dumps([o.raw for k, o in fake.objects.items()
                                   if k[0] == kmock.resource("", "v1", "configmaps")]),
        "other requests": "\n".join(r.text for r in list(fake) if "/secrets/" not in r.url.path),
    }
    for where, text in places.items():
        for needle in secrets + encoded:
            assert needle not in text, f"a secret value leaked into {where}"
    assert "<hidden>" in places["log"]    # the diff shows that the Secret exists, not what it holds


@pytest.mark.security
@pytest.mark.asyncio
async def test_the_admin_token_is_random_per_deployment_kept_by_a_redeploy_and_shown_nowhere(fake, _isolated_runs):
    """The request log's admin port takes only the token of the Secret the deploy makes: a new
    random one per Deployment, the same one on a redeploy (the pods read it at start), read by
    the pods through secretKeyRef, never in the ConfigMap, the manifests, the log or the run."""
    from mlops_kit.serving import ADMIN_TOKEN

    proxy_to_model_server(fake)
    run_dir = make_run(_isolated_runs, "run-1")
    lines: list[str] = []
    secrets = kmock.resource("", "v1", "secrets")
    async with FakeController(fake):
        dry = await run(k8s.deploy, run_dir, params(), api_client=api_client(fake), log=lines.append, dry_run=True)
        assert (secrets, NS, "model-server-admin-token") not in fake.objects    # a dry run makes none
        await run(k8s.deploy, run_dir, params(), api_client=api_client(fake), log=lines.append, poll=0.01)
        first = fake.objects[secrets, NS, "model-server-admin-token"].raw["data"]["token"]
        await run(k8s.deploy, make_run(_isolated_runs, "run-2", digest_char="c"), params(),
                  api_client=api_client(fake), log=lines.append, poll=0.01)
        kept = fake.objects[secrets, NS, "model-server-admin-token"].raw["data"]["token"]
        other = params(name="other-server")
        await run(k8s.deploy, run_dir, other, api_client=api_client(fake), log=lines.append, poll=0.01)
        others = fake.objects[secrets, NS, "other-server-admin-token"].raw["data"]["token"]
    token = base64.b64decode(first).decode()
    assert ADMIN_TOKEN.fullmatch(token) and len(token) >= 43           # secrets.token_urlsafe(32): 256 bits
    assert kept == first and others != first
    assert "unchanged Secret/model-server-admin-token" in "\n".join(lines)
    deployment = fake.objects[DEPLOYMENTS, NS, "model-server"].raw
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLOPS_KIT_ADMIN_TOKEN"] == {"name": "MLOPS_KIT_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "model-server-admin-token", "key": "token", "optional": True}}}
    places = {
        "log": "\n".join(lines),
        "dry-run result": json.dumps(dry, default=str),
        "rendered": json.dumps(k8s.prepare(run_dir, params())["objects"]),
        "config maps": json.dumps([o.raw for k, o in fake.objects.items()
                                   if k[0] == kmock.resource("", "v1", "configmaps")]),
        "other requests": "\n".join(r.text for r in list(fake) if "/secrets/" not in r.url.path),
        "the run folders (run.json, release.json, ...)": "\n".join(
            f.read_text(errors="replace") for f in _isolated_runs.rglob("*") if f.is_file()),
    }
    for where, text in places.items():
        for needle in (token, first):
            assert needle not in text, f"the admin token leaked into {where}"


@pytest.mark.security
def test_a_configmap_that_holds_the_admin_token_is_refused():
    from mlops_kit.deploy.k8s import _render

    templates = _render.load_manifests()
    next(o for o in templates if o["kind"] == "ConfigMap").setdefault("data", {})["MLOPS_KIT_ADMIN_TOKEN"] = "x" * 43
    with pytest.raises(K8sDeployError, match="data must not hold MLOPS_KIT_ADMIN_TOKEN") as caught:
        _render.render(params(), image="m@sha256:" + "a" * 64, model_sha256="b" * 64, run_id="r", templates=templates)
    assert "x" * 43 not in str(caught.value)


def test_missing_secret_variable_is_named(monkeypatch, _isolated_runs):
    monkeypatch.delenv("NOT_SET_TOKEN", raising=False)
    with pytest.raises(K8sDeployError, match=r"neither \$NOT_SET_TOKEN nor \$NOT_SET_TOKEN_FILE is set"):
        k8s.prepare(make_run(_isolated_runs, "run-1"), params(secret_env=["NOT_SET_TOKEN"]))


def test_missing_image_json_names_the_stage(_isolated_runs):
    run_dir = make_run(_isolated_runs, "run-1")
    (run_dir / "artifacts" / "image.json").unlink()
    with pytest.raises(MlopsKitError, match=r"image.json must exist .*stage 'package'"):
        k8s.prepare(run_dir, params())


def test_rollout_state_follows_kubectl():
    dep = {"metadata": {"name": "m", "namespace": "n", "generation": 2},
           "spec": {"replicas": 2}, "status": {"observedGeneration": 1}}
    assert k8s.rollout_state(dep) == (False, "Waiting for deployment 'm' spec update to be observed...")
    dep["status"] = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}
    assert "1 old replicas are pending termination" in k8s.rollout_state(dep)[1]
    dep["status"] = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}
    assert "1 of 2 updated replicas are available" in k8s.rollout_state(dep)[1]
    dep["status"]["availableReplicas"] = 2
    assert k8s.rollout_state(dep)[0] is True


@pytest.mark.asyncio
async def test_an_apply_refused_part_way_rolls_back_to_the_last_good_release(fake, _isolated_runs):
    """A 422 on the Deployment after the ConfigMap of the new release was applied: the last good
    release is applied again (its ConfigMap included), not left half-changed."""
    good, bad = make_run(_isolated_runs, "run-good"), make_run(_isolated_runs, "run-bad", digest_char="d")
    proxy_to_model_server(fake)
    async with FakeController(fake) as controller:
        await run(k8s.deploy, good, params(), api_client=api_client(fake), log=lambda _: None, poll=0.01)
        refuse = fake["patch", re.compile(r"/apis/apps/v1/namespaces/[^/]+/deployments/.*")]
        calls = {"n": 0}

        def once(request):
            calls["n"] += 1
            if calls["n"] == 1:
                raise kmock.KubernetesError(status=422, reason="Invalid", message="spec.replicas: Invalid value")
            return NotImplemented          # then let the emulator answer
        refuse << once
        with pytest.raises(K8sDeployError) as caught:
            await run(k8s.deploy, bad, params(replicas=3), api_client=api_client(fake), log=lambda _: None,
                      poll=0.01)
    assert caught.value.reason == "Invalid" and "Rolled back to release" in str(caught.value)
    deployment = fake.objects[DEPLOYMENTS, NS, "model-server"].raw
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith("a" * 64)
    status = await run(k8s.status, params(), api_client=api_client(fake))
    assert [(r["run_id"], r["status"]) for r in status["releases"]] == [
        ("run-good", "succeeded"), ("run-bad", "failed"), ("run-good", "succeeded")]
    assert [s for _, s in controller.seen][-1] == "ok"


def test_a_secret_only_change_rolls_the_pods_without_showing_the_value(_isolated_runs, monkeypatch):
    run_dir = make_run(_isolated_runs, "run-1")
    p = params(secret_env=["MODEL_API_TOKEN"])

    def template_annotations(value: str) -> dict:
        monkeypatch.setenv("MODEL_API_TOKEN", value)
        objects = k8s.prepare(run_dir, p)["objects"]
        deployment = [o for o in objects if o["kind"] == "Deployment"][0]
        return deployment["spec"]["template"]["metadata"]["annotations"]

    first, second = template_annotations("token-one-5a1"), template_annotations("token-two-7b2")
    assert first["mlops-kit/secret-checksum"] != second["mlops-kit/secret-checksum"]   # new pods
    assert first["mlops-kit/release-id"] != second["mlops-kit/release-id"]
    assert first == template_annotations("token-one-5a1")                           # stable
    assert "token-one-5a1" not in json.dumps(first) and "token-two-7b2" not in json.dumps(second)


def test_release_history_merges_what_a_concurrent_deploy_wrote():
    from mlops_kit.deploy.k8s import _releases

    class Cluster:
        """A stand-in for the API server's ConfigMap semantics: apply with a stale
        resourceVersion is a 409 Conflict (what a real API server answers)."""

        def __init__(self):
            self.version, self.data = 1, []
            self.conflict_once = True

        def get(self, kind, namespace, name):
            return {"metadata": {"resourceVersion": str(self.version)},
                    "data": {_releases.DATA_KEY: json.dumps(self.data)}}

        def apply(self, obj, force=False):
            if self.conflict_once:          # another deploy wrote release 2 just before us
                self.conflict_once = False
                self.data.append({"revision": 2, "release_id": "theirs", "time": "t2", "status": "succeeded"})
                self.version += 1
                raise K8sDeployError("conflict", reason="Conflict", status=409)
            assert obj["metadata"]["resourceVersion"] == str(self.version)
            self.data = json.loads(obj["data"][_releases.DATA_KEY])
            self.version += 1

    cluster = Cluster()
    cluster.data = [{"revision": 1, "release_id": "first", "time": "t1", "status": "succeeded"}]
    ours = _releases.read_history(cluster, NS, "model-server")
    ours.append({"revision": 2, "release_id": "ours", "time": "t3", "status": "succeeded"})
    _releases.write_history(cluster, NS, "model-server", ours)
    assert [(r["revision"], r["release_id"]) for r in cluster.data] == [(1, "first"), (2, "theirs"), (3, "ours")]
