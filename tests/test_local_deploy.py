"""05_deploy, target local: the run's image in a private containerd (or a local process)."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import urllib.request

import pytest

from test_image_support import image_cache, make_run, need_layers_builder, start_containerd

from mlops_kit import image as mk_image
from mlops_kit import artifacts, deploy
from mlops_kit.deploy import local
from mlops_kit.errors import DeployError
from mlops_kit.image import _containerd
from mlops_kit.params import RunParams

pytestmark = pytest.mark.containerd


@pytest.fixture(autouse=True)
def _cache(monkeypatch):
    monkeypatch.setenv("MLOPS_KIT_CACHE_DIR", str(image_cache()))


def _params(socket=None, **deploy) -> RunParams:
    params = RunParams()
    params.package.builder = "layers"
    params.package.containerd_socket = str(socket) if socket else None
    for key, value in deploy.items():
        setattr(params.deploy, key, value)
    return params


def _predict(url: str, records) -> list:
    req = urllib.request.Request(url + "/predict", data=json.dumps(records).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"]


def test_container_deploy_replaces_the_old_one_after_it_passed(model_dir, mixed_model_dir, _isolated_runs):
    need_layers_builder()
    socket = start_containerd()
    params = _params(socket)
    first = make_run(_isolated_runs, model_dir, "r-one")
    mk_image.package(first, params)
    try:
        release = local.deploy(first, params)
        assert release["mode"] == "container" and release["smoke"]["passed"]
        assert json.loads((first / "artifacts" / "release.json").read_text()) == release
        examples = json.loads((first / "artifacts" / "examples.json").read_text())
        assert _predict(release["url"], examples["records"]) == examples["predictions"]
        assert local.status(params)["ready"] is True

        # a new container that crashes at start: the old one keeps serving, the log is shown
        broken = make_run(_isolated_runs, model_dir, "r-broken")
        context = mk_image.write_context(broken / "artifacts", run_id="r-broken", image="mlops-kit/model")
        model = context.model / "model.skops"
        model.write_bytes(model.read_bytes() + b"tampered")
        built = mk_image.build(context, "layers")
        mk_image.import_image(built, mk_image.Containerd(socket))
        artifacts.IMAGE.save(broken, {"ref": built.ref, "tag": context.tag, "image": "mlops-kit/model",
                                      "digest": built.manifest_digest, "run_id": "r-broken", "builder": "layers",
                                      "content_digest": context.digest, "layout": str(built.layout),
                                      "created": "2026-01-01T00:00:00Z"})
        with pytest.raises(DeployError) as err:
            local.deploy(broken, params)
        assert "previous deployment keeps serving" in str(err.value)
        assert "sha256" in str(err.value)                    # the server's own message, from its log
        state = local.status(params)
        assert state["ready"] and state["run_id"] == "r-one" and state["name"] == release["name"]
        assert _predict(release["url"], examples["records"]) == examples["predictions"]

        # a good new release: the old one stops only after the new one passed
        second = make_run(_isolated_runs, mixed_model_dir, "r-two")
        mk_image.package(second, params)
        new = local.deploy(second, params)
        assert new["previous"]["name"] == release["name"]
        assert local.status(params)["run_id"] == "r-two"
        assert release["name"] not in _containerd.Containerd(socket).containers()

        # the same interface as microk8s: a rollback serves the run that served before
        back = deploy.rollback(params, log=lambda _: None)
        assert back["run_id"] == "r-one" and local.status(params)["run_id"] == "r-one"
        assert _predict(back["url"], examples["records"]) == examples["predictions"]
    finally:
        result = local.undeploy(params)
    assert result["undeployed"] and local.status(params) == {"target": "local", "deployed": False}


def test_fixed_local_port_is_handed_over(model_dir, _isolated_runs):
    need_layers_builder()
    socket = start_containerd()
    from mlops_kit.deploy.local import free_port

    port = free_port()
    params = _params(socket, local_port=port)
    run = make_run(_isolated_runs, model_dir, "r-port")
    mk_image.package(run, params)
    try:
        first = local.deploy(run, params)
        second = local.deploy(run, params)
        assert first["port"] == second["port"] == port and second["name"] != first["name"]
        assert local.status(params)["ready"]
    finally:
        local.undeploy(params)


def test_process_mode_without_a_container_runtime(model_dir, _isolated_runs, monkeypatch):
    monkeypatch.setattr(_containerd, "SYSTEM_SOCKET", "/nonexistent/containerd.sock")
    monkeypatch.setattr(_containerd.Runner, "which", lambda self, name: None if name == "microk8s" else shutil.which(name))
    params = _params(None)
    run = make_run(_isolated_runs, model_dir, "r-process")
    try:
        release = local.deploy(run, params)
        assert release["mode"] == "process" and release["pid"] and release["smoke"]["passed"]
        assert local.status(params)["ready"]
        again = local.deploy(run, params)
        assert again["previous"]["pid"] == release["pid"]
    finally:
        local.undeploy(params)
    assert local.status(params)["deployed"] is False


@pytest.mark.security
def test_the_server_process_gets_only_the_environment_it_needs(model_dir, _isolated_runs, monkeypatch):
    """Not the caller's whole environment: basics, the serving settings, the named secrets."""
    monkeypatch.setattr(_containerd, "SYSTEM_SOCKET", "/nonexistent/containerd.sock")
    monkeypatch.setattr(_containerd.Runner, "which", lambda self, name: None if name == "microk8s" else shutil.which(name))
    monkeypatch.setenv("UNRELATED_CANARY", "leaked-canary")
    monkeypatch.setenv("MODEL_TOKEN", "named-secret")
    params = _params(None, secret_env=["MODEL_TOKEN"])
    params.serve.max_rows = 77
    run = make_run(_isolated_runs, model_dir, "r-env")
    try:
        release = local.deploy(run, params)
        with open(f"/proc/{release['pid']}/environ", "rb") as fh:
            env = dict(item.split("=", 1) for item in fh.read().decode().split("\0") if "=" in item)
    finally:
        local.undeploy(params)
    assert "UNRELATED_CANARY" not in env and "MLOPS_KIT_RUNS_DIR" not in env
    assert env["MODEL_TOKEN"] == "named-secret" and env["MLOPS_KIT_MAX_ROWS"] == "77"
    from mlops_kit.serving._settings import ENVIRONMENT as SERVING_SETTINGS

    assert set(env) <= set(local.BASIC_ENV) | {"MODEL_TOKEN", "MLOPS_KIT_INSTANCE", *SERVING_SETTINGS.values()}


def _no_container_runtime(monkeypatch):
    monkeypatch.setattr(_containerd, "SYSTEM_SOCKET", "/nonexistent/containerd.sock")
    monkeypatch.setattr(_containerd.Runner, "which", lambda self, name: None if name == "microk8s" else shutil.which(name))


@contextlib.contextmanager
def _look_alike(examples: dict):
    """A server that answers like a kit server: ready, and the examples' predictions."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._answer({"ready": True})

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self._answer({"predictions": examples["predictions"]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.security
def test_a_look_alike_on_the_port_is_not_taken_for_the_new_server(model_dir, _isolated_runs, monkeypatch):
    """Another process on deploy.local_port answered the readiness wait and the smoke test,
    and the deploy reported success while its own server had died of 'address already in
    use'. A taken port is refused before anything starts; a port taken after that check is
    told apart by the instance value the new server names."""
    _no_container_runtime(monkeypatch)
    run = make_run(_isolated_runs, model_dir, "r-taken")
    examples = json.loads((run / "artifacts" / "examples.json").read_text())
    with _look_alike(examples) as port:
        params = _params(None, local_port=port)
        lines = []
        with pytest.raises(DeployError, match=f"deploy.local_port {port} must be free"):
            local.deploy(run, params, log=lines.append)
        assert not any("started" in line for line in lines)
        # the port taken between the check and the new server's start
        monkeypatch.setattr(local, "check_port_free", lambda port: None)
        with pytest.raises(DeployError, match="must be the one just started"):
            local.deploy(run, params, log=lines.append)
    assert local.read_state() is None and not (run / "artifacts" / "release.json").exists()


def test_the_ready_answer_names_the_instance_it_was_started_with(model_dir):
    from _serving_process import ServerProcess

    server = ServerProcess(model_dir, env={"MLOPS_KIT_INSTANCE": "abc123"}).wait_ready()
    try:
        assert local._probe(server.url) == (200, "abc123")
        assert local._ready(server.url, "abc123") and not local._ready(server.url, "other")
    finally:
        server.stop()


@pytest.mark.security
def test_two_local_deploys_at_once_leave_one_server_the_state_names(model_dir, _isolated_runs, monkeypatch):
    """Both reported success, the state kept one and undeploy left the other running: now the
    second waits for the first, then replaces it."""
    _no_container_runtime(monkeypatch)
    runs = [make_run(_isolated_runs, model_dir, f"r-race-{i}") for i in range(2)]
    releases, errors = [], []

    def deploy_one(run):
        try:
            releases.append(local.deploy(run, _params(None), log=lambda _: None))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deploy_one, args=(run,)) for run in runs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not errors and len(releases) == 2
        state = local.read_state()
        alive = [r["pid"] for r in releases if local._pid_alive(r["pid"])]
        assert alive == [state["pid"]]
        assert releases[1]["previous"]["pid"] == releases[0]["pid"]
    finally:
        local.undeploy(_params(None), log=lambda _: None)
    assert not any(local._pid_alive(r["pid"]) for r in releases)
