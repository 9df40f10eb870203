"""The request log collected from every replica (issue 21, item 2): the server's admin port
(``serve.monitor.admin_port``: GET /requests, /requests/{name}, never on the public port, only
with the admin token) and ``mlops-kit monitor`` reading it through the Kubernetes API's pod
proxy with the token of the Deployment's Secret (a FAKE API, kmock, whose pod proxy forwards to
REAL servers as the API server's does: every header but Authorization and the hop-by-hop ones)."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from _serving_process import ServerProcess, free_port

from mlops_kit.serving import ADMIN_TOKEN_HEADER

ROWS = [{"mean radius": 14.0}]
#: the admin token of the test servers (a deploy makes a random one: secrets.token_urlsafe(32))
TOKEN = "test-admin-token-0123456789abcdefghijklmnopqrstuv"
AUTH = {ADMIN_TOKEN_HEADER: TOKEN}
RAW_AUTH = f"{ADMIN_TOKEN_HEADER}: {TOKEN}\r\n".encode()


def _get_raw(port: int, head: bytes) -> bytes:
    """``head`` sent as it is (no client normalizes its path), the whole answer back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _predict(url: str, model_dir, requests: int) -> None:
    import json

    from mlops_kit import artifacts

    records = artifacts.EXAMPLES.load(model_dir).records
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(requests):
            answer = client.post("/predict", content=json.dumps(records), headers={"x-request-id": f"r-{i}"})
            assert answer.status_code == 200, answer.text


def _wait_listing(admin: str, timeout: float = 20, token: str = TOKEN) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = httpx.get(f"{admin}/requests", headers={ADMIN_TOKEN_HEADER: token}, timeout=5).json()
        if files and all(f["size"] > 0 for f in files):
            return files
        time.sleep(0.1)
    raise AssertionError("no request log file listed")


@pytest.fixture(scope="module")
def logging_server(model_dir, tmp_path_factory):
    """A real ``python -m mlops_kit.serving`` with a request log and its admin port."""
    log = tmp_path_factory.mktemp("served-log")
    admin_port = free_port()
    server = ServerProcess(model_dir, "--log-requests", str(log), "--log-sample", "1",
                           "--admin-port", str(admin_port), env={"MLOPS_KIT_ADMIN_TOKEN": TOKEN}).wait_ready()
    server.admin_port = admin_port
    server.admin = f"http://127.0.0.1:{admin_port}"
    server.log = log
    try:
        _predict(server.url, model_dir, 3)
        _wait_listing(server.admin)
        yield server
    finally:
        server.stop()


# --- the server's admin port -------------------------------------------------------------------

def test_the_admin_port_lists_and_streams_the_log_files(logging_server):
    files = httpx.get(f"{logging_server.admin}/requests", headers=AUTH, timeout=5).json()
    on_disk = sorted(p.name for p in logging_server.log.iterdir())
    assert [f["name"] for f in files] == on_disk
    for listed in files:
        body = httpx.get(f"{logging_server.admin}/requests/{listed['name']}", headers=AUTH, timeout=5).content
        assert body == (logging_server.log / listed["name"]).read_bytes()[:len(body)]
        assert len(body) >= listed["size"] > 0


def test_the_public_port_never_serves_the_log(logging_server):
    answer = httpx.get(f"{logging_server.url}/requests", timeout=5)
    assert answer.status_code == 404
    name = httpx.get(f"{logging_server.admin}/requests", headers=AUTH, timeout=5).json()[0]["name"]
    assert httpx.get(f"{logging_server.url}/requests/{name}", headers=AUTH, timeout=5).status_code == 404


@pytest.mark.security
@pytest.mark.parametrize("path", [b"/requests/../../../../etc/passwd", b"/requests/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                                  b"/requests/..", b"/requests/", b"/requests//etc/passwd", b"/etc/passwd",
                                  b"/requests/requests-20260101T000000-1-1.jsonl/../../x"])
def test_a_path_outside_the_log_is_refused(logging_server, path):
    answer = _get_raw(logging_server.admin_port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + RAW_AUTH + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert b"root:" not in answer


@pytest.mark.security
def test_a_symlink_or_a_fifo_named_like_a_log_file_is_neither_listed_nor_served(logging_server):
    link = logging_server.log / "requests-20000101T000000-1-1.jsonl"
    fifo = logging_server.log / "requests-20000101T000000-1-2.jsonl"
    link.symlink_to("/etc/passwd")
    os.mkfifo(fifo)
    try:
        names = [f["name"] for f in httpx.get(f"{logging_server.admin}/requests", headers=AUTH, timeout=5).json()]
        assert link.name not in names and fifo.name not in names
        for path in (link, fifo):
            answer = httpx.get(f"{logging_server.admin}/requests/{path.name}", headers=AUTH, timeout=5)
            assert answer.status_code == 404 and b"root:" not in answer.content
    finally:
        link.unlink()
        fifo.unlink()


@pytest.mark.security
def test_the_admin_port_takes_only_get_and_a_bounded_head(logging_server):
    answer = _get_raw(logging_server.admin_port, b"POST /requests HTTP/1.1\r\nContent-Length: 0\r\n" + RAW_AUTH +
                      b"\r\n")
    assert answer.startswith(b"HTTP/1.1 405 ")
    answer = _get_raw(logging_server.admin_port, b"GET /requests HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert httpx.get(f"{logging_server.admin}/requests", headers=AUTH, timeout=5).status_code == 200   # still serving


# --- the admin token: another pod of the cluster reaches the pod's IP, but not the log ----------

WRONG_SAME_LENGTH = TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")


@pytest.mark.security
@pytest.mark.parametrize("head, status", [
    (b"", 401),                                                                  # no token at all
    (f"{ADMIN_TOKEN_HEADER}: \r\n".encode(), 403),                              # an empty one
    (f"{ADMIN_TOKEN_HEADER}: {WRONG_SAME_LENGTH}\r\n".encode(), 403),           # one character off
    (f"{ADMIN_TOKEN_HEADER}: {TOKEN[:20]}\r\n".encode(), 403),                  # a prefix
    (f"{ADMIN_TOKEN_HEADER}: {TOKEN}x\r\n".encode(), 403),                      # longer
    (f"{ADMIN_TOKEN_HEADER}: {TOKEN.upper()}\r\n".encode(), 403),               # case matters
    (f"{ADMIN_TOKEN_HEADER}: {TOKEN}\r\n{ADMIN_TOKEN_HEADER}: x\r\n".encode(), 403),   # twice: ambiguous
    (f"Authorization: Bearer {TOKEN}\r\n".encode(), 401),                       # not the header it takes
    (f"X-{ADMIN_TOKEN_HEADER}: {TOKEN}\r\n".encode(), 401),
    (f"Cookie: {ADMIN_TOKEN_HEADER}={TOKEN}\r\n".encode(), 401),
], ids=["none", "empty", "one-off", "prefix", "longer", "upper", "twice", "authorization", "other-name", "cookie"])
@pytest.mark.parametrize("path", [b"/requests", b"/requests/requests-20260101T000000-1-1.jsonl", b"/nope"])
def test_the_admin_port_refuses_a_request_without_the_servers_token(logging_server, head, status, path):
    answer = _get_raw(logging_server.admin_port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert ADMIN_TOKEN_HEADER.encode() in body and b"requests-" not in body and TOKEN.encode() not in body
    # the same request with the token in any letter case of the header's name is served
    good = _get_raw(logging_server.admin_port, b"GET /requests HTTP/1.1\r\n" +
                    f"{ADMIN_TOKEN_HEADER.title()}:  {TOKEN} \r\n".encode() + b"\r\n")
    assert good.startswith(b"HTTP/1.1 200 ") and b"requests-" in good


@pytest.mark.security
def test_a_server_without_a_token_serves_its_log_to_no_one_and_predictions_to_everyone(model_dir, tmp_path):
    log = tmp_path / "log"
    admin_port = free_port()
    server = ServerProcess(model_dir, "--log-requests", str(log), "--log-sample", "1", "--admin-port",
                           str(admin_port), env={"MLOPS_KIT_ADMIN_TOKEN": ""}).wait_ready()
    try:
        _predict(server.url, model_dir, 2)
        for head in (b"", RAW_AUTH, f"{ADMIN_TOKEN_HEADER}: \r\n".encode()):
            answer = _get_raw(admin_port, b"GET /requests HTTP/1.1\r\n" + head + b"\r\n")
            assert answer.startswith(b"HTTP/1.1 403 ") and b"MLOPS_KIT_ADMIN_TOKEN" in answer, answer[:300]
    finally:
        server.stop()
    assert list(log.glob("requests-*.jsonl"))                                # it logs, it only does not serve
    assert "refuses every request: no admin token is set (MLOPS_KIT_ADMIN_TOKEN)" in server.process.stderr.read()


@pytest.mark.security
@pytest.mark.parametrize("token, found", [("short-token", "11 characters"), ("a" * 40 + " b", "other characters"),
                                          ("x" * 40 + "\u00e9", "other characters")])
def test_a_bad_admin_token_setting_is_refused_without_showing_it(model_dir, tmp_path, token, found):
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(model_dir),
                           "--log-requests", str(tmp_path), "--admin-port", str(free_port())], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLOPS_KIT_ADMIN_TOKEN": token})
    assert done.returncode == 2, done.stderr
    assert "admin_token" in done.stderr and found in done.stderr and "Traceback" not in done.stderr
    assert token not in done.stderr and token not in done.stdout


def test_an_admin_port_without_a_request_log_is_refused(model_dir):
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(model_dir),
                           "--admin-port", str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "log_requests" in done.stderr and "admin port" in done.stderr and "Traceback" not in done.stderr


# --- the client: through a FAKE API server's pod proxy ------------------------------------------

import asyncio  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import kmock  # noqa: E402
import pytest_asyncio  # noqa: E402
from kubernetes import client as kclient  # noqa: E402
from test_k8s_fakes import DEPLOYMENTS, PODS, FakeApiServer  # noqa: E402

from mlops_kit.errors import ArtifactError, K8sDeployError  # noqa: E402
from mlops_kit.kube import Cluster  # noqa: E402
from mlops_kit.monitor import collect as collecting  # noqa: E402

NS = "mk-monitor"
POD_PROXY = re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/proxy/.*")
SELECTOR = {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/part-of": "mlops-kit"}
GOOD = "requests-20260101T000000-1-1.jsonl"
SECRETS = kmock.resource("", "v1", "secrets")
#: what the API server's pod proxy does not pass on to the pod: Authorization (deleted by the
#: authentication filter) and the hop-by-hop headers (Go's ReverseProxy); see serving/_settings.py
NOT_FORWARDED = {"authorization", "connection", "proxy-connection", "keep-alive", "proxy-authenticate",
                 "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host", "accept-encoding"}


def _pod(name: str, port: int = 8081, phase: str = "Running", labels=None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": dict(labels or SELECTOR)},
            "spec": {"containers": [{"name": "server", "image": "x", "ports": [
                {"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": port}]}]},
            "status": {"phase": phase}}


@pytest_asyncio.fixture
async def fake():
    """A fake Kubernetes API server (kmock) holding a Deployment ``model-server`` and its pods."""
    async with FakeApiServer() as server, kmock.Server(server) as http:
        server.resources["v1/pods"] = {}
        server.objects[DEPLOYMENTS, NS, "model-server"] = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "model-server", "namespace": NS},
            "spec": {"selector": {"matchLabels": dict(SELECTOR)}}}
        server.objects[SECRETS, NS, "model-server-admin-token"] = _token_secret(TOKEN)
        server.url_for_client = str(http.url).rstrip("/")
        yield server


def _token_secret(token: str, key: str = "token") -> dict:
    import base64

    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "model-server-admin-token", "namespace": NS},
            "type": "Opaque", "data": {key: base64.b64encode(token.encode()).decode()}}


def _cluster(fake) -> Cluster:
    return Cluster(kclient.ApiClient(kclient.Configuration(host=fake.url_for_client)))


def _pod_and_path(request) -> tuple[str, int, str]:
    rest = request.url.path.split("/pods/", 1)[1]
    target, path = rest.split("/proxy/", 1)
    pod, port = target.split(":")
    return pod, int(port), path


def _answer_with(fake, answers: dict[str, dict[str, bytes]]) -> list[str]:
    """The pod proxy answers ``answers[pod][path]`` (404 when absent); returns the paths asked."""
    asked = []

    def handler(request):
        pod, _, path = _pod_and_path(request)
        asked.append(f"{pod}/{path}")
        if request.headers.get(ADMIN_TOKEN_HEADER) != TOKEN:    # as the real server would
            return kmock.Response(status=401, payload=b'{"error": "no token", "detail": null}')
        body = answers.get(pod, {}).get(path)
        return kmock.Response(status=404, payload=b"{}") if body is None else kmock.Response(status=200, payload=body)

    fake["get", POD_PROXY] << handler
    return asked


async def _collect(fake, dest, **kwargs):
    return await asyncio.to_thread(collecting.collect, _cluster(fake), NS, "model-server", dest, **kwargs)


@pytest.mark.asyncio
async def test_each_replica_goes_to_its_own_folder_and_only_running_pods_of_the_deployment(fake, tmp_path):
    fake.objects[PODS, NS, "model-server-a"] = _pod("model-server-a")
    fake.objects[PODS, NS, "model-server-b"] = _pod("model-server-b", port=9001)
    fake.objects[PODS, NS, "model-server-c"] = _pod("model-server-c", phase="Pending")
    fake.objects[PODS, NS, "other"] = _pod("other", labels={"app": "other"})
    line = b'{"x": 1}\n'
    listing = json.dumps([{"name": GOOD, "size": len(line)}]).encode()
    asked = _answer_with(fake, {pod: {"requests": listing, f"requests/{GOOD}": line}
                                for pod in ("model-server-a", "model-server-b", "model-server-c", "other")})
    dest = await _collect(fake, tmp_path / "log")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.jsonl")) == \
        [f"model-server-a/{GOOD}", f"model-server-b/{GOOD}"]
    assert (dest / "model-server-b" / GOOD).read_bytes() == line
    assert sorted(asked) == sorted(f"model-server-{p}/{path}" for p in "ab"
                                   for path in ("requests", f"requests/{GOOD}"))
    ports = {_pod_and_path(r)[1] for r in fake if POD_PROXY.match(r.url.path)}
    assert ports == {8081, 9001}            # the port each pod declares as "admin"


@pytest.mark.asyncio
async def test_a_file_that_grew_since_the_listing_is_kept_as_listed_and_a_new_collection_replaces_the_old(fake,
                                                                                                        tmp_path):
    fake.objects[PODS, NS, "model-server-a"] = _pod("model-server-a")
    _answer_with(fake, {"model-server-a": {"requests": json.dumps([{"name": GOOD, "size": 4}]).encode(),
                                           f"requests/{GOOD}": b"abc\ndef\n"}})
    dest = tmp_path / "log"
    (dest / "gone-pod").mkdir(parents=True)
    await _collect(fake, dest)
    assert (dest / "model-server-a" / GOOD).read_bytes() == b"abc\n"
    assert not (dest / "gone-pod").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]     # no staging folder left


def _listing(*entries) -> bytes:
    return json.dumps(list(entries)).encode()


HOSTILE = {
    "dot-dot": (_listing({"name": "../requests-20260101T000000-1-1.jsonl", "size": 1}), "file name of the request log"),
    "slash": (_listing({"name": "a/requests-20260101T000000-1-1.jsonl", "size": 1}), "file name of the request log"),
    "not-json": (b"<html>proxy error</html>", "listing must be JSON"),
    "not-a-list": (b'{"name": "x"}', "listing must be a list"),
    "extra-key": (_listing({"name": GOOD, "size": 1, "path": "/etc/passwd"}), "exactly name and size"),
    "size-text": (_listing({"name": GOOD, "size": "1"}), "must be a number of bytes"),
    "negative-size": (_listing({"name": GOOD, "size": -5}), "must be a number of bytes"),
    "twice": (_listing({"name": GOOD, "size": 1}, {"name": GOOD, "size": 1}), "listed once"),
    "too-many-files": (_listing(*({"name": f"requests-20260101T000000-1-{i}.jsonl", "size": 1}
                                  for i in range(collecting.MAX_FILES + 1))), f"at most {collecting.MAX_FILES} files"),
    "size-lies": (_listing({"name": GOOD, "size": 1000}), "must be 1000 bytes long (as listed). Got 9 bytes"),
    "too-big": (_listing({"name": GOOD, "size": 10 ** 12}), "must be at most 4096 bytes"),
    "huge-listing": (b"[" + b" " * (collecting.MAX_LISTING_BYTES + 10) + b"]", "listing must be at most"),
}


@pytest.mark.security
@pytest.mark.asyncio
@pytest.mark.parametrize("case", HOSTILE)
async def test_a_hostile_pod_is_refused_naming_it_and_what_was_expected(fake, tmp_path, case):
    listing, expected = HOSTILE[case]
    fake.objects[PODS, NS, "model-server-evil"] = _pod("model-server-evil")
    _answer_with(fake, {"model-server-evil": {"requests": listing, f"requests/{GOOD}": b'{"x": 1}\n'}})
    with pytest.raises(ArtifactError) as caught:
        await _collect(fake, tmp_path / "log", max_bytes=4096)
    assert f"pod {NS}/model-server-evil" in caught.value.message and expected in caught.value.message, \
        caught.value.message
    assert not (tmp_path / "log").exists() and list(tmp_path.iterdir()) == []   # nothing half collected


@pytest.mark.asyncio
async def test_every_request_to_a_pod_carries_the_token_of_the_deployments_secret(fake, tmp_path):
    fake.objects[PODS, NS, "model-server-a"] = _pod("model-server-a")
    _answer_with(fake, {"model-server-a": {"requests": _listing({"name": GOOD, "size": 2}),
                                           f"requests/{GOOD}": b"{}"}})
    await _collect(fake, tmp_path / "log")
    proxied = [r for r in fake if POD_PROXY.match(r.url.path)]
    assert len(proxied) == 2 and all(r.headers.get(ADMIN_TOKEN_HEADER) == TOKEN for r in proxied)
    assert [r.url.path for r in fake if "/secrets/" in r.url.path] == \
        [f"/api/v1/namespaces/{NS}/secrets/model-server-admin-token"]   # that one Secret, read once


@pytest.mark.security
@pytest.mark.asyncio
@pytest.mark.parametrize("secret, reason, words", [
    (None, "NotFound", "must exist (the admin token"),
    (_token_secret("short"), "Invalid", "must be 32 to 256 characters"),
    (_token_secret("a" * 40 + "\r\nx-injected: 1"), "Invalid", "must be 32 to 256 characters"),
    (_token_secret(TOKEN, key="other"), "Invalid", "must be 32 to 256 characters"),
    ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "model-server-admin-token", "namespace": NS},
      "data": {"token": "not base64 ~~"}}, "Invalid", "must be 32 to 256 characters"),
], ids=["absent", "short", "header-injection", "other-key", "not-base64"])
async def test_a_missing_or_bad_token_secret_stops_before_any_pod_is_asked(fake, tmp_path, secret, reason, words):
    fake.objects[PODS, NS, "model-server-a"] = _pod("model-server-a")
    if secret is None:
        del fake.objects[SECRETS, NS, "model-server-admin-token"]
    else:
        fake.objects[SECRETS, NS, "model-server-admin-token"] = secret
    asked = _answer_with(fake, {})
    with pytest.raises(K8sDeployError) as caught:
        await _collect(fake, tmp_path / "log")
    assert caught.value.reason == reason and words in caught.value.message, caught.value.message
    assert f"Secret {NS}/model-server-admin-token" in caught.value.message
    assert "short" not in caught.value.message and "x-injected" not in caught.value.message
    assert asked == [] and list(tmp_path.iterdir()) == []


@pytest.mark.security
@pytest.mark.asyncio
async def test_a_pod_that_refuses_the_token_is_named_with_what_to_do(fake, tmp_path):
    fake.objects[PODS, NS, "model-server-a"] = _pod("model-server-a")
    fake.objects[SECRETS, NS, "model-server-admin-token"] = _token_secret("n" * 43)   # rotated since the pod started
    _answer_with(fake, {})
    with pytest.raises(K8sDeployError) as caught:
        await _collect(fake, tmp_path / "log")
    assert caught.value.reason == "Forbidden" and caught.value.status == 401
    assert f"pod {NS}/model-server-a" in caught.value.message and "admin token" in caught.value.message
    assert "rollout restart deployment/model-server" in caught.value.hint
    assert "n" * 43 not in caught.value.message and list(tmp_path.iterdir()) == []


@pytest.mark.security
@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["..", "../../etc", "a/b", "UPPER"])
async def test_a_pod_name_that_is_not_a_kubernetes_name_is_refused(fake, tmp_path, name):
    fake.objects[PODS, NS, "model-server-a"] = _pod("model-server-a")
    fake.objects[PODS, NS, "model-server-a"].patch({"metadata": {"name": name}})
    _answer_with(fake, {})
    with pytest.raises(ArtifactError, match="must have a Kubernetes pod name"):
        await _collect(fake, tmp_path / "log")
    assert list(tmp_path.iterdir()) == []


# --- end to end: `mlops-kit monitor` collects from two REAL replicas, then judges ---------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_mlops_kit_monitor_collects_from_every_replica_and_gives_the_verdict(fake, tmp_path):
    import math
    import secrets
    import subprocess
    import sys

    import pandas as pd
    from test_monitor_e2e import default_model_run

    runs = tmp_path / "runs"
    run = default_model_run(runs)
    secret_token = secrets.token_urlsafe(32)                     # as a deploy makes it
    fake.objects[SECRETS, NS, "model-server-admin-token"] = _token_secret(secret_token)
    replicas = {}
    for pod in ("model-server-a", "model-server-b"):
        admin_port = free_port()
        replicas[pod] = ServerProcess(run / "artifacts", "--log-requests", str(tmp_path / pod), "--log-sample", "1",
                                      "--admin-port", str(admin_port), env={"MLOPS_KIT_ADMIN_TOKEN": secret_token})
        replicas[pod].admin = f"http://127.0.0.1:{admin_port}"
        fake.objects[PODS, NS, pod] = _pod(pod, port=admin_port)

    async def forward(request):   # the pod proxy: to the replica's REAL admin port, headers as the API server's
        pod, _, path = _pod_and_path(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        async with httpx.AsyncClient(base_url=replicas[pod].admin, timeout=30) as http:
            answer = await http.get(f"/{path}", headers=headers)
        return kmock.Response(status=answer.status_code, payload=answer.content)

    fake["get", POD_PROXY] << forward
    try:
        split = pd.read_parquet(run / "artifacts" / "test.parquet").drop(columns=["target"])
        half = len(split) // 2
        for (pod, server), rows in zip(replicas.items(), (split.iloc[:half], split.iloc[half:])):
            await asyncio.to_thread(server.wait_ready)
            records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                       for row in rows.to_dict("records")]
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                for start in range(0, len(records), 20):
                    answer = await http.post("/predict", json=records[start:start + 20])
                    assert answer.status_code == 200, answer.text
            await asyncio.to_thread(_wait_listing, server.admin, token=secret_token)
            # another pod of the cluster, straight to the pod's admin port: nothing without the token
            async with httpx.AsyncClient(base_url=server.admin, timeout=30) as http:
                assert (await http.get("/requests")).status_code == 401
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": fake.url_for_client}}],
            "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}))
        env = {**os.environ, "MLOPS_KIT_RUNS_DIR": str(runs), "KUBECONFIG": str(kubeconfig)}
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "mlops_kit.cli", "monitor", run.name, "--json",
                             "--set", "deploy.target=microk8s", "--set", f"deploy.namespace={NS}"],
            capture_output=True, text=True, env=env, timeout=600)
    finally:
        for server in replicas.values():
            server.stop()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # the token: read from the Secret, sent to the pods, written nowhere (output, run.json, the
    # executed notebook, the report, the servers' logs)
    written = [f for f in runs.rglob("*") if f.is_file() and secret_token.encode() in f.read_bytes()]
    assert written == [] and secret_token not in done.stdout + done.stderr
    assert all(secret_token not in server.process.stderr.read() for server in replicas.values())
    summary = json.loads(done.stdout)
    assert summary["verdict"]["status"] == "healthy"
    assert summary["window"]["rows"] == len(split)            # both replicas' rows, once each
    collected = runs / ".requests" / ".collected" / run.name
    assert sorted(p.name for p in collected.iterdir()) == ["model-server-a", "model-server-b"]
    for pod in replicas:
        assert sorted(p.name for p in (collected / pod).iterdir()) == sorted(p.name for p in (tmp_path / pod).iterdir())
    assert "from pod model-server-a" in done.stderr and "from pod model-server-b" in done.stderr


def test_the_reader_reads_each_replicas_folder_and_follows_no_linked_folder(tmp_path):
    from mlops_kit.monitor.requestlog import RequestLogWriter, read_request_log

    sha = "c" * 64
    for pod, rows in (("pod-a", 2), ("pod-b", 3)):
        writer = RequestLogWriter(tmp_path / "log" / pod, sample=1, model_sha256=sha)
        writer.offer(f"{pod}-r", {"x": [1.0] * rows}, [0] * rows)
        writer.close()
    outside = tmp_path / "outside"
    writer = RequestLogWriter(outside, sample=1, model_sha256=sha)
    writer.offer("outside-r", {"x": [1.0]}, [0])
    writer.close()
    (tmp_path / "log" / "linked").symlink_to(outside, target_is_directory=True)
    frame = read_request_log(tmp_path / "log")
    assert sorted(set(frame["request_id"])) == ["pod-a-r", "pod-b-r"] and len(frame) == 5
    assert all(name.split("/")[0] in ("pod-a", "pod-b") for name in frame.attrs["files"])


@pytest.mark.asyncio
async def test_a_role_without_pods_proxy_is_told_so(fake, tmp_path):
    from mlops_kit.errors import K8sDeployError

    fake.objects[PODS, NS, "model-server-a"] = _pod("model-server-a")
    fake["get", POD_PROXY] << kmock.Response(status=403, payload=json.dumps({
        "kind": "Status", "reason": "Forbidden", "message": 'pods "model-server-a" is forbidden: User "dev" cannot '
        'get resource "pods/proxy" in API group "" in the namespace "mk-monitor"'}).encode())
    with pytest.raises(K8sDeployError) as caught:
        await _collect(fake, tmp_path / "log")
    assert caught.value.reason == "Forbidden" and "pods/proxy" in caught.value.message
    assert "model-server-a" in caught.value.message and list(tmp_path.iterdir()) == []
