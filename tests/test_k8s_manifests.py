"""The manifests in k8s/: strict Kubernetes schema (kubernetes-validate, offline) for what
every parameter file renders and for `kubectl kustomize k8s/`, plus the meaning checks the
schema cannot make (selector vs labels, DNS names, pinned image)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlops_kit.deploy import k8s
from mlops_kit.deploy.k8s import _render
from mlops_kit.errors import K8sDeployError, ManifestError
from mlops_kit.params import RunParams, load_params

from _real import need_commands

REPO = Path(__file__).resolve().parent.parent
PARAMETER_FILES = sorted((REPO / "parameters").glob("*.yaml"))
IMAGE = "mlops-kit/model:run-1@sha256:" + "a" * 64


def rendered(params: RunParams) -> list[dict]:
    return k8s.render(params, image=IMAGE, model_sha256="b" * 64, run_id="20260101-120000-abcd")


@pytest.mark.parametrize("file", PARAMETER_FILES, ids=lambda f: f.name)
def test_every_parameter_file_renders_strictly_valid_manifests(file):
    params = load_params(file).params
    objects = rendered(params)
    assert k8s.validate(objects, params.deploy.kubernetes_version) == []
    assert [o["kind"] for o in objects] == ["Namespace", "ConfigMap", "Service", "Deployment"]
    deployment = _render.find(objects, "Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == params.deploy.replicas
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["image"] == IMAGE and container["imagePullPolicy"] in ("Never", "IfNotPresent")
    assert container["command"] == ["python3", "-m", "mlops_kit.serving"]
    assert container["args"] == ["--model-dir", "/app/model", "--host", "0.0.0.0", "--port", "8080"]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["mlops-kit/model-sha256"] == "b" * 64 and len(annotations["mlops-kit/config-checksum"]) == 64
    service = _render.find(objects, "Service")
    assert service["spec"]["type"] == params.deploy.service_type
    assert service["spec"]["ports"][0]["port"] == params.deploy.port
    if params.deploy.node_port:
        assert service["spec"]["ports"][0]["nodePort"] == params.deploy.node_port
    config = _render.find(objects, "ConfigMap")["data"]
    assert config == {"MLOPS_KIT_MAX_ROWS": str(params.serve.max_rows),
                      "MLOPS_KIT_MAX_BODY_BYTES": str(params.serve.max_body_bytes),
                      "MLOPS_KIT_UNKNOWN_CATEGORIES": params.serve.unknown_categories,
                      "MLOPS_KIT_DRIFT_WINDOW": str(params.serve.monitor.window),
                      "MLOPS_KIT_LOG_SAMPLE": repr(float(params.serve.monitor.sample)),
                      "MLOPS_KIT_LOG_REQUESTS": _render.REQUEST_LOG_DIR_IN_IMAGE,
                      "MLOPS_KIT_LOG_MAX_FILE_BYTES": str(params.serve.monitor.max_file_bytes),
                      "MLOPS_KIT_LOG_MAX_TOTAL_BYTES": str(params.serve.monitor.max_total_bytes),
                      "MLOPS_KIT_ADMIN_PORT": str(params.serve.monitor.admin_port)}
    # the request log's admin port: declared by name on the container, never exposed by the Service
    assert {"name": "admin", "containerPort": params.serve.monitor.admin_port, "protocol": "TCP"} in container["ports"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objects} == {params.deploy.namespace}
    # its token: only from the Deployment's own Secret (made by the deploy), never a value here
    assert [e for e in container["env"] if e["name"] == "MLOPS_KIT_ADMIN_TOKEN"] == [{
        "name": "MLOPS_KIT_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": f"{params.deploy.name}-admin-token", "key": "token", "optional": True}}}]
    token_secret = _render.admin_token_secret_object(params, "t" * 43)
    assert k8s.validate([token_secret], params.deploy.kubernetes_version) == []
    assert token_secret["metadata"]["name"] == f"{params.deploy.name}-admin-token"


@pytest.mark.parametrize("version", ["1.25.0", "1.30.0", "1.33.0", "1.37.0"])
def test_rendered_manifests_are_valid_for_supported_kubernetes_versions(version):
    params = RunParams(deploy={"kubernetes_version": version})
    assert k8s.validate(rendered(params), version) == []


def test_names_settings_and_checksums_follow_the_parameters():
    base = rendered(RunParams())
    params = RunParams(deploy={"name": "churn-api", "namespace": "team-a", "service_type": "NodePort",
                               "node_port": 31000, "port": 9000, "replicas": 3},
                       serve={"max_rows": 50, "unknown_categories": "reject"})
    objects = rendered(params)
    k8s.validate(objects, params.deploy.kubernetes_version)
    deployment = _render.find(objects, "Deployment")
    assert deployment["metadata"]["name"] == "churn-api"
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "churn-api"
    refs = [r for r in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]]
    assert refs[0]["configMapRef"]["name"] == "churn-api-config"
    assert refs[1]["secretRef"] == {"name": "churn-api-secrets", "optional": True}
    a_new = deployment["spec"]["template"]["metadata"]["annotations"]
    a_old = _render.find(base, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert a_new["mlops-kit/config-checksum"] != a_old["mlops-kit/config-checksum"]     # new settings roll pods
    assert a_new["mlops-kit/release-id"] != a_old["mlops-kit/release-id"]
    assert _render.find(objects, "Service")["spec"]["ports"][0] == {
        "name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP", "nodePort": 31000}


def test_pull_policy_follows_where_the_image_went():
    imported = "docker.io/mlops-kit/model:r1@sha256:" + "a" * 64
    policy = _render.pull_policy
    assert policy(imported, RunParams(), {"imported": {"containerd": "microk8s", "namespace": "k8s.io"}}) == "Never"
    assert policy(imported, RunParams(), {"imported": {"registry": "localhost:32000"}}) == "IfNotPresent"
    assert policy(imported, RunParams(), {}) == "Never"
    assert policy("localhost:32000/mlops-kit/model:r1", RunParams(), {}) == "IfNotPresent"


def test_registry_images_may_be_pulled():
    params = RunParams(package={"registry": "localhost:32000"})
    objects = k8s.render(params, image="localhost:32000/mlops-kit/model:r1@sha256:" + "a" * 64,
                         model_sha256="b" * 64, run_id="r1")
    assert _render.find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "imagePullPolicy"] == "IfNotPresent"


def test_node_port_without_node_port_service_is_refused():
    with pytest.raises(K8sDeployError, match=r"deploy.node_port must be unset when deploy.service_type is "
                                              r"ClusterIP. Got 30080 instead."):
        rendered(RunParams(deploy={"node_port": 30080}))


@pytest.mark.parametrize("break_it, field, words", [
    (lambda o: _render.find(o, "Deployment")["spec"]["template"]["metadata"]["labels"].update(
        {"app.kubernetes.io/name": "other"}), "spec.selector.matchLabels", "must match"),
    (lambda o: _render.find(o, "Deployment")["spec"]["template"]["spec"]["containers"][0].update(
        image="mlops-kit/model:latest"), "image", "latest"),
    (lambda o: _render.find(o, "Deployment")["spec"]["template"]["spec"]["containers"][0].update(
        image="mlops-kit/model"), "image", "pinned"),
    (lambda o: _render.find(o, "Service")["metadata"].update(name="1api"), "metadata.name", "DNS-1035"),
    (lambda o: _render.find(o, "ConfigMap")["metadata"].update(name="Bad_Name"), "metadata.name", "DNS"),
    (lambda o: _render.find(o, "Service")["spec"]["ports"][0].update(targetPort="metrics"), "targetPort",
     "port of the selected pods"),
    (lambda o: _render.find(o, "Deployment")["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1),
     "maxUnavailable", "must be 0"),
    (lambda o: _render.find(o, "Deployment")["spec"]["template"]["spec"]["containers"][0].update(
        imagePullPolicy="Sometimes"), "imagePullPolicy", "Sometimes"),
    (lambda o: _render.find(o, "Deployment")["spec"].update(replica=2), "spec", "replica"),
])
def test_validation_names_object_field_and_problem(break_it, field, words):
    objects = copy.deepcopy(rendered(RunParams()))
    break_it(objects)
    with pytest.raises(ManifestError) as caught:
        k8s.validate(objects, "1.33.0")
    text = str(caught.value)
    assert field in text and words in text and "Kubernetes 1.33.0" in text
    assert all(len(p) == 4 for p in caught.value.problems)


def test_unsupported_kubernetes_version_is_reported():
    with pytest.raises(ManifestError, match="does not support version"):
        k8s.validate(rendered(RunParams()), "1.99.0")


def test_secret_example_is_a_valid_template_without_values():
    docs = list(yaml.safe_load_all((REPO / "k8s" / "secret.example.yaml").read_text()))
    assert len(docs) == 1 and docs[0]["kind"] == "Secret" and not docs[0].get("stringData") and not docs[0].get("data")
    assert k8s.schema_problems(docs, "1.33.0") == []
    kustomization = yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]


def test_kubectl_kustomize_output_is_valid():
    need_commands("kubectl")
    result = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "Deployment", "Namespace", "Service"]
    assert k8s.schema_problems(objects, "1.33.0") == []
    assert k8s.meaning_problems(objects) == []
    # kustomize and the kit read the same files: same objects apart from what the kit fills in
    ours = {(o["kind"], o["metadata"]["name"]) for o in k8s.load_manifests(REPO / "k8s")}
    assert ours == {(o["kind"], o["metadata"]["name"]) for o in objects}


def test_unknown_kustomization_feature_is_refused(tmp_path):
    folder = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", folder)
    with (folder / "kustomization.yaml").open("a") as fh:
        fh.write("patches:\n  - path: extra.yaml\n")
    with pytest.raises(K8sDeployError, match=r"patches: the kit reads only"):
        k8s.load_manifests(folder)


@pytest.mark.security
@pytest.mark.parametrize("target", ["admin", 8081])
def test_a_service_that_exposes_the_request_logs_admin_port_is_refused(target):
    from mlops_kit.errors import K8sDeployError

    templates = _render.load_manifests(_render.manifests_dir())
    service = _render.find(templates, "Service")
    service["spec"]["ports"].append({"name": "log", "port": 9000, "targetPort": target})
    with pytest.raises(K8sDeployError, match="must not expose the admin port"):
        _render.render(RunParams(), image=IMAGE, model_sha256="b" * 64, run_id="r", templates=templates)


@pytest.mark.security
@pytest.mark.parametrize("edit", ["removed", "literal", "other-secret"])
def test_the_admin_token_comes_from_the_deployments_secret_whatever_the_template_says(edit):
    templates = _render.load_manifests(_render.manifests_dir())
    container = _render.find(templates, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    entry = next(e for e in container["env"] if e["name"] == "MLOPS_KIT_ADMIN_TOKEN")
    if edit == "removed":
        container["env"].remove(entry)
    elif edit == "literal":
        entry.pop("valueFrom")
        entry["value"] = "written-in-the-template-0123456789abcdef"
    else:
        entry["valueFrom"]["secretKeyRef"]["name"] = "someone-elses-secret"
    objects = _render.render(RunParams(deploy={"name": "churn"}), image=IMAGE, model_sha256="b" * 64, run_id="r",
                             templates=templates)
    container = _render.find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [e for e in container["env"] if e["name"] == "MLOPS_KIT_ADMIN_TOKEN"] == [{
        "name": "MLOPS_KIT_ADMIN_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "churn-admin-token", "key": "token", "optional": True}}}]
    assert "written-in-the-template" not in str(objects)


def test_the_admin_port_of_the_parameters_is_the_one_declared_and_listened_on():
    objects = rendered(RunParams(serve={"monitor": {"admin_port": 9100}}))
    container = _render.find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "admin", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
    assert _render.find(objects, "ConfigMap")["data"]["MLOPS_KIT_ADMIN_PORT"] == "9100"
