"""05_deploy.ipynb under papermill, with a real kernel, deploying to a FAKE Kubernetes API
server (kmock, see tests/test_k8s_fakes.py) that the kernel finds through KUBECONFIG; and the
secret scan of the executed notebook."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nbformat
import pytest
import pytest_asyncio

kmock = pytest.importorskip("kmock")
papermill = pytest.importorskip("papermill")

from test_k8s_fakes import PROXY_PREDICT, FakeApiServer, FakeController, make_run, proxy_to_model_server, serve_namespaces  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "05_deploy.ipynb"


def test_notebook_is_committed_clean_with_every_deploy_parameter():
    from mlops_kit.params import DeployParams

    nb = nbformat.read(NOTEBOOK, 4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    names = {line.split("=")[0].strip() for line in parameters[0].source.splitlines()
             if "=" in line and not line.startswith("#")}
    assert names == {"run_dir", *DeployParams.model_fields}
    namespace: dict = {}
    exec(parameters[0].source, namespace)
    assert DeployParams(**{k: namespace[k] for k in DeployParams.model_fields}) == DeployParams()


@pytest_asyncio.fixture
async def fake_with_kubeconfig(tmp_path, monkeypatch):
    async with FakeApiServer() as server, kmock.Server(server) as http:
        server.resources["v1/pods"] = {}
        server.resources["v1/events"] = {}
        serve_namespaces(server)
        url = str(http.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]}))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield server


@pytest.mark.slow
@pytest.mark.asyncio
async def test_notebook_deploys_to_microk8s_target_and_keeps_secrets_out(fake_with_kubeconfig, _isolated_runs,
                                                                         monkeypatch, tmp_path):
    fake = fake_with_kubeconfig
    secret = "nb-s3cret-4b7a"
    monkeypatch.setenv("MODEL_API_TOKEN", secret)
    run_dir = make_run(_isolated_runs, "run-nb")
    proxy_to_model_server(fake)
    output = tmp_path / "05_deploy.executed.ipynb"
    async with FakeController(fake) as controller:
        await asyncio.to_thread(
            papermill.execute_notebook, str(NOTEBOOK), str(output), kernel_name="python3", progress_bar=False,
            cwd=str(REPO), parameters={"run_dir": str(run_dir), "target": "microk8s", "namespace": "nb-test",
                                       "secret_env": ["MODEL_API_TOKEN"], "rollout_timeout": 60})
    assert [s for _, s in controller.seen] == ["ok"]
    release = json.loads((run_dir / "artifacts" / "release.json").read_text())
    assert release["status"] == "succeeded" and release["namespace"] == "nb-test"
    executed = output.read_text()
    assert "successfully rolled out" in executed and "smoke test: 3 predictions match" in executed
    assert secret not in executed and secret not in (run_dir / "artifacts" / "release.json").read_text()
