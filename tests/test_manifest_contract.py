"""Contract: the rendered Deployment (k8s/ through the kit's renderer) against the image the
kit builds, run for real in a private containerd exactly as the manifest says (tests/_kubelet.py):
its user and group, read-only root file system and writable volumes, env from the rendered
ConfigMap and Secret, command and args, the probes answering 200 on the containerPort, the
recorded examples predicted, SIGTERM ending it within terminationGracePeriodSeconds.

The mutations at the end show that the test fails when the manifest and the image disagree."""

from __future__ import annotations

import copy
import os
import secrets

import pandas as pd
import pytest

import _kubelet
from test_image_support import image_cache, make_run, need_layers_builder, start_containerd
from _real import need_commands

from mlops_kit import artifacts, evaluate, model_io
from mlops_kit import image as mk_image
from mlops_kit.deploy import k8s
from mlops_kit.deploy.k8s import _render
from mlops_kit.image._containerd import Containerd
from mlops_kit.monitor import read_request_log
from mlops_kit.params import load_params

pytestmark = [pytest.mark.contract, pytest.mark.containerd]

#: A value for the Secret the Deployment reads (deploy.secret_env), never a real one.
SECRET_ENV = "MLOPS_KIT_CONTRACT_TOKEN"
SECRET_VALUE = "contract-test-value"


@pytest.fixture(scope="module")
def containerd():
    old = os.environ.get("MLOPS_KIT_CACHE_DIR")
    os.environ["MLOPS_KIT_CACHE_DIR"] = str(image_cache())
    need_commands("nsenter")
    yield Containerd(start_containerd())
    if old is None:
        os.environ.pop("MLOPS_KIT_CACHE_DIR", None)
    else:
        os.environ["MLOPS_KIT_CACHE_DIR"] = old


def _evaluate(run, params) -> None:
    """The evaluate stage's work on the run (its real functions): metrics.json with the gate."""
    folder = run / "artifacts"
    schema = artifacts.SCHEMA.load(folder)
    frame = pd.read_parquet(artifacts.TEST_SPLIT.path(folder))
    model = model_io.load_model(folder)
    metrics = evaluate.compute_metrics(model, frame[schema.feature_names], frame[schema.target], schema.task)
    gate = evaluate.check_gate(metrics, params.evaluate.gate, schema.task)
    artifacts.METRICS.save(folder, {"task": schema.task, "model": artifacts.MODEL_CARD.load(folder).model,
                                    "data_fingerprint": schema.fingerprint, "metrics": metrics, "gate": gate})


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, model_dir, containerd):
    """The real image of the default model, imported into the private containerd, and the objects
    a deploy of that run renders with the default parameters (plus one secret_env, so the
    Secret the Deployment reads is rendered too)."""
    need_layers_builder()
    run = make_run(tmp_path_factory.mktemp("runs"), model_dir, "20250101-000000-c0de")
    params = load_params().params
    _evaluate(run, params)
    params.package = params.package.model_copy(update={"containerd_socket": containerd.socket, "builder": "layers"})
    mk_image.package(run, params)
    params.deploy = params.deploy.model_copy(update={"secret_env": [SECRET_ENV]})
    # every request logged: the server in the pod writes its request log into the emptyDir
    params.serve.monitor = params.serve.monitor.model_copy(update={"sample": 1.0})
    plan = k8s.prepare(run, params, environ={SECRET_ENV: SECRET_VALUE})
    examples = artifacts.EXAMPLES.load(run)
    # the admin token's Secret, as a deploy makes it (never among the rendered objects)
    admin_secret = _render.admin_token_secret_object(params, secrets.token_urlsafe(32))
    return {"objects": plan["objects"], "secret": plan["secret"], "admin_secret": admin_secret,
            "body": artifacts.smoke_request(examples), "predictions": list(examples.predictions), "run": run}


def _check(deployment, containerd, workdir, objects=None):
    objects = objects if objects is not None else deployment["objects"]
    return _kubelet.check([*objects, deployment["secret"], deployment["admin_secret"]], containerd, workdir,
                          predict_body=deployment["body"], predictions=deployment["predictions"])


def test_the_rendered_pod_runs_in_containerd_as_the_manifest_says(deployment, containerd, tmp_path):
    report = _check(deployment, containerd, tmp_path)
    assert report.problems == []
    container = _render.find(deployment["objects"], "Deployment")["spec"]["template"]["spec"]
    uid, gid = container["securityContext"]["runAsUser"], container["securityContext"]["runAsGroup"]
    seen = report.observed
    assert seen["uid"] == [uid] * 4 and seen["gid"] == [gid] * 4 and container["securityContext"]["fsGroup"] \
        in seen["groups"]
    assert seen["writes /"] == "EROFS" and seen["writes /tmp"] is True
    assert seen["startupProbe"] == seen["readinessProbe"] == seen["livenessProbe"] == 200
    assert set(_render.find(deployment["objects"], "ConfigMap")["data"]) <= set(seen["env"])
    assert SECRET_ENV in seen["env"] and "MLOPS_KIT_ADMIN_TOKEN" in seen["env"]
    assert seen["exit_code"] == 0                 # its own shutdown, not the grace period's SIGKILL
    # the request log: in the emptyDir volume (the root file system is read-only), one row per
    # example the contract sent, of this model
    log_dir = _render.REQUEST_LOG_DIR_IN_IMAGE
    assert seen[f"writes {log_dir}"] is True
    (folder,) = {path.parent for path in tmp_path.glob("*/volumes/requests/requests-*.jsonl")}
    logged = read_request_log(folder, model_sha256=artifacts.MODEL_CARD.load(deployment["run"]).sha256)
    assert len(logged) == len(deployment["predictions"]) and logged["prediction"].tolist() == deployment["predictions"]
    # the admin port (containerPort "admin", not in the Service) serves that log, as the pod proxy reads it,
    # with the token of the Secret, and nothing without it
    assert seen["admin without the token"] == 401
    assert [entry["name"] for entry in seen["admin listing"]] == logged.attrs["files"]
    for entry in seen["admin listing"]:
        assert seen[f"admin {entry['name']}"] == (folder / entry["name"]).read_text()
    service = _render.find(deployment["objects"], "Service")
    assert "admin" not in [port["targetPort"] for port in service["spec"]["ports"]]


def _mutated(deployment, change):
    objects = copy.deepcopy(deployment["objects"])
    change(_render.find(objects, "Deployment")["spec"]["template"]["spec"])
    return objects


def _readiness_nope(pod):
    pod["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/nope"


def _python_not_python3(pod):
    pod["containers"][0]["command"][0] = "python"


def _pinned_elsewhere(pod):
    image = pod["containers"][0]["image"]
    pod["containers"][0]["image"] = image.split("@")[0] + "@sha256:" + "0" * 64


def _root_user(pod):
    pod["securityContext"]["runAsUser"] = 0


def _listens_on_loopback(pod):
    args = pod["containers"][0]["args"]
    args[args.index("--host") + 1] = "127.0.0.1"


def _shell_swallows_sigterm(pod):
    # a shell as PID 1 that waits for the server: SIGTERM has no handler there, so it is ignored
    container = pod["containers"][0]
    container["args"] = ["-c", " ".join(container["command"] + container["args"]) + "; exit 0"]
    container["command"] = ["sh"]
    pod["terminationGracePeriodSeconds"] = 2


def _admin_port_elsewhere(pod):
    admin = next(port for port in pod["containers"][0]["ports"] if port["name"] == "admin")
    admin["containerPort"] = 8082    # the server (MLOPS_KIT_ADMIN_PORT) listens on 8081


def _admin_token_from_elsewhere(pod):
    env = pod["containers"][0]["env"]
    next(e for e in env if e["name"] == "MLOPS_KIT_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]["name"] = "absent"


def _probe_port_unnamed(pod):
    pod["containers"][0]["livenessProbe"]["httpGet"]["port"] = "metrics"


@pytest.mark.parametrize("change, expected", [
    (_readiness_nope, "readinessProbe GET /nope on port 8080 answered 404"),
    (_python_not_python3, 'exec: "python": executable file not found'),
    (_pinned_elsewhere, "the manifest pins sha256:" + "0" * 64),
    (_root_user, "runAsNonRoot is true but the container would run as uid 0"),
    (_probe_port_unnamed, "livenessProbe names port 'metrics'"),
    (_listens_on_loopback, "the server listens on ['127.0.0.1'] port 8080"),
    (_admin_port_elsewhere, "GET /requests on the admin port 8082 answered"),
    # optional: the pod starts without it, and its admin port refuses everyone
    (_admin_token_from_elsewhere, "GET /requests on the admin port 8081 answered 403; expected 200"),
    (_shell_swallows_sigterm, "the container still runs 2 s (terminationGracePeriodSeconds) after SIGTERM"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_the_contract_fails_when_manifest_and_image_disagree(deployment, containerd, tmp_path, change, expected):
    report = _check(deployment, containerd, tmp_path, _mutated(deployment, change))
    assert any(expected in problem for problem in report.problems), report.problems
    assert containerd.containers() == []          # nothing left running
