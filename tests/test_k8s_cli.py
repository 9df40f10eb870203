"""`mlops-kit deploy/status/rollback/undeploy` as a user runs them (a subprocess), against a FAKE
Kubernetes API server (kmock, tests/test_k8s_fakes.py) found through KUBECONFIG."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
import pytest_asyncio

kmock = pytest.importorskip("kmock")

from test_k8s_fakes import PROXY_PREDICT, FakeApiServer, FakeController, make_run, proxy_to_model_server, serve_namespaces  # noqa: E402


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mlops_kit.cli import run_cli; run_cli()", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest_asyncio.fixture
async def fake(tmp_path, monkeypatch):
    async with FakeApiServer() as server, kmock.Server(server) as http:
        server.resources["v1/pods"] = {}
        server.resources["v1/events"] = {}
        serve_namespaces(server)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": str(http.url).rstrip("/")}}],
            "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]}))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield server


@pytest.mark.asyncio
async def test_deploy_dry_run_then_deploy_status_rollback_undeploy(fake, _isolated_runs):
    make_run(_isolated_runs, "run-1")
    make_run(_isolated_runs, "run-2", digest_char="c")
    proxy_to_model_server(fake)
    common = ("--set", "deploy.namespace=cli-test", "--set", "deploy.rollout_timeout=60")

    dry = await asyncio.to_thread(cli, "deploy", "run-1", "--target", "microk8s", "--dry-run", *common)
    assert dry.returncode == 0, dry.stderr
    assert "create    Deployment/model-server" in dry.stdout and "dry run: nothing applied." in dry.stdout

    async with FakeController(fake):
        for run_id in ("run-1", "run-2"):
            done = await asyncio.to_thread(cli, "deploy", run_id, "--target", "microk8s", *common)
            assert done.returncode == 0, done.stderr
            assert "successfully rolled out" in done.stdout
        back = await asyncio.to_thread(cli, "rollback", "-p", "parameters/microk8s.yaml", *common, "--json")
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout[back.stdout.index("{"):])["run_id"] == "run-1"

    status = await asyncio.to_thread(cli, "status", "-p", "parameters/microk8s.yaml", *common, "--json")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout[status.stdout.index("{"):])
    assert [r["run_id"] for r in state["releases"]] == ["run-1", "run-2", "run-1"]
    table = await asyncio.to_thread(cli, "status", "-p", "parameters/microk8s.yaml", *common)
    assert "releases (* = current)" in table.stdout and "restores 1" in table.stdout

    gone = await asyncio.to_thread(cli, "undeploy", "-p", "parameters/microk8s.yaml", *common, "--delete-namespace")
    assert gone.returncode == 0 and "deleted Namespace/cli-test" in gone.stdout


def test_errors_are_plain_messages(_isolated_runs, tmp_path):
    missing = cli("deploy", "no-such-run", "--target", "microk8s")
    assert missing.returncode == 1 and "No run 'no-such-run'" in missing.stderr and "Traceback" not in missing.stderr
    make_run(_isolated_runs, "run-1")
    bad = cli("deploy", "run-1", "--set", "deploy.replicas=-1")
    assert bad.returncode == 2 and "deploy.replicas" in bad.stderr and "Traceback" not in bad.stderr
    nowhere = cli("status", "-p", "parameters/microk8s.yaml",
                  env={"KUBECONFIG": str(tmp_path / "absent"), "PATH": os.environ.get("PATH", "")})
    assert nowhere.returncode == 1 and "KUBECONFIG names" in nowhere.stderr and "Traceback" not in nowhere.stderr
