"""Deploy and roll back on a REAL Kubernetes cluster (MicroK8s), one namespace per test.

Runs only when KUBECONFIG points at a cluster (no API server can run on the CI machines,
so this suite is skipped there, with the reason). The good-release tests also need a run
whose image is in the cluster's containerd: MLOPS_KIT_K8S_RUN=<run folder>. See
docs/microk8s.md.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from mlops_kit.deploy import k8s
from mlops_kit.errors import K8sDeployError
from mlops_kit.params import RunParams

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"),
                       reason="no real cluster: set KUBECONFIG to a MicroK8s kubeconfig (docs/microk8s.md)"),
]


@pytest.fixture
def namespace():
    name = f"mlops-kit-test-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        k8s.undeploy(RunParams(deploy={"target": "microk8s", "namespace": name}), delete_namespace=True,
                     log=lambda _: None)
    except K8sDeployError:
        pass


def params(namespace: str, **deploy) -> RunParams:
    return RunParams(deploy={"target": "microk8s", "namespace": namespace, "rollout_timeout": 180, **deploy})


def packaged_run() -> Path:
    value = os.environ.get("MLOPS_KIT_K8S_RUN")
    if not value:
        pytest.skip("set MLOPS_KIT_K8S_RUN to a run folder whose image is imported into the cluster "
                    "(mlops-kit run -p parameters/microk8s.yaml)")
    return Path(value)


def broken_copy(run_dir: Path, tmp_path: Path) -> Path:
    """The same run, but with an image digest no node has."""
    copy = tmp_path / "runs" / f"{run_dir.name}-broken"
    shutil.copytree(run_dir / "artifacts", copy / "artifacts",
                    ignore=shutil.ignore_patterns("context", "*.tar", "*.png", "*.parquet"))
    image = json.loads((copy / "artifacts" / "image.json").read_text())
    image["ref"] = image["ref"].split("@")[0]
    image["digest"] = "sha256:" + "0" * 64
    (copy / "artifacts" / "image.json").write_text(json.dumps(image))
    return copy


def test_status_of_an_empty_namespace(namespace):
    result = k8s.status(params(namespace))
    assert result["deployed"] is False and result["releases"] == []


def test_image_not_on_the_node_fails_with_a_hint(namespace, tmp_path):
    artifacts = tmp_path / "runs" / "run-missing-image" / "artifacts"
    artifacts.mkdir(parents=True)
    (artifacts / "model_card.json").write_text(json.dumps({"sha256": "b" * 64}))
    (artifacts / "image.json").write_text(json.dumps({"ref": "mlops-kit/model:not-imported",
                                                      "digest": "sha256:" + "0" * 64}))
    (artifacts / "examples.json").write_text(json.dumps({"records": [{"x": 1}], "predictions": [0]}))
    with pytest.raises(K8sDeployError) as caught:
        k8s.deploy(artifacts.parent, params(namespace), log=print)
    assert caught.value.reason == "ErrImageNeverPull" and "import" in caught.value.hint
    assert caught.value.rolled_back_to is None


def test_deploy_fail_rollback_and_undeploy(namespace, tmp_path):
    good = packaged_run()
    first = k8s.deploy(good, params(namespace), log=print)
    assert first["status"] == "succeeded"
    with pytest.raises(K8sDeployError) as caught:
        k8s.deploy(broken_copy(good, tmp_path), params(namespace), log=print)
    assert caught.value.reason == "ErrImageNeverPull"
    assert caught.value.rolled_back_to["run_id"] == good.name
    state = k8s.status(params(namespace))
    assert state["ready"] and state["current"]["run_id"] == good.name
    assert [r["status"] for r in state["releases"]] == ["succeeded", "failed", "succeeded"]
    removed = k8s.undeploy(params(namespace), log=print)
    assert "Deployment/model-server" in removed["deleted"]


def test_nodeport_service_answers_through_the_proxy(namespace):
    good = packaged_run()
    release = k8s.deploy(good, params(namespace, service_type="NodePort", replicas=2), log=print)
    assert "NodePort" in release["endpoint"]
