"""05_deploy, target local: the run's image in a private containerd (or a local process)."""

from __future__ import annotations

import json
import shutil
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

    assert set(env) <= set(local.BASIC_ENV) | {"MODEL_TOKEN", *SERVING_SETTINGS.values()}
