"""`mlops-kit deploy/status/rollback/undeploy --target microk8s` with server.host set: the
server's Kubernetes API through a REAL SSH tunnel (tests/_sshd.py), with the kubeconfig that
`microk8s config` prints there.

The API server is FAKE (kmock, tests/test_k8s_fakes.py) and the server's `microk8s` command is
a STAND-IN script whose `config` prints a kubeconfig pointing at the fake. KUBECONFIG is unset
and HOME has no ~/.kube/config: the only way to the API is through the server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_asyncio

kmock = pytest.importorskip("kmock")

from _sshd import REPO, Sshd, install_microk8s
from test_k8s_fakes import (
    FakeApiServer,
    FakeController,
    make_run,
    proxy_to_model_server,
    serve_namespaces,
)

pytestmark = pytest.mark.ssh
TOKEN = "server-only-token-1234567890"


def cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "mlops_kit.cli", *args], capture_output=True, text=True, env=env,
                          timeout=180)


@pytest_asyncio.fixture
async def fake_behind_server(tmp_path):
    async with FakeApiServer() as server, kmock.Server(server) as http:
        server.resources["v1/pods"] = {}
        server.resources["v1/events"] = {}
        serve_namespaces(server)
        kubeconfig = json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "microk8s",
            "clusters": [{"name": "microk8s-cluster", "cluster": {"server": str(http.url).rstrip("/")}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "microk8s", "context": {"cluster": "microk8s-cluster", "user": "admin"}}]})
        sshd = await asyncio.to_thread(lambda: Sshd().start())
        install_microk8s(sshd, socket=None, kubeconfig=kubeconfig)
        try:
            yield server, sshd
        finally:
            sshd.stop_all()


@pytest.mark.asyncio
async def test_deploy_status_rollback_undeploy_through_the_tunnel(fake_behind_server, _isolated_runs, tmp_path):
    fake, sshd = fake_behind_server
    tunnels_before = set(Path(tempfile.gettempdir()).glob("mlops-kit-tunnel-*"))
    home = tmp_path / "home"
    home.mkdir()
    make_run(_isolated_runs, "run-1")
    make_run(_isolated_runs, "run-2", digest_char="c")
    proxy_to_model_server(fake)      # the fake cluster's Service proxy: the real model server app
    common = ("--set", "deploy.namespace=ssh-test", "--set", "deploy.rollout_timeout=60",
              "--set", f"server.host={sshd.url()}", "--set", f"server.identity_file={sshd.user_key}",
              "--set", f"server.known_hosts={sshd.known_hosts}")

    async with FakeController(fake):
        for run_id in ("run-1", "run-2"):
            done = await asyncio.to_thread(cli, "deploy", run_id, "--target", "microk8s", *common, home=home)
            assert done.returncode == 0, done.stderr
            assert "through an SSH tunnel" in done.stdout and "successfully rolled out" in done.stdout
        back = await asyncio.to_thread(cli, "rollback", "-p", "parameters/microk8s.yaml", *common, "--json",
                                       home=home)
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout[back.stdout.index("{"):])["run_id"] == "run-1"

    status = await asyncio.to_thread(cli, "status", "-p", "parameters/microk8s.yaml", *common, "--json", home=home)
    assert status.returncode == 0, status.stderr
    assert [r["run_id"] for r in json.loads(status.stdout)["releases"]] == ["run-1", "run-2", "run-1"]
    gone = await asyncio.to_thread(cli, "undeploy", "-p", "parameters/microk8s.yaml", *common, home=home)
    assert gone.returncode == 0 and "deleted Deployment/model-server" in gone.stdout

    # the credentials never reached a file the kit wrote, nor its output
    for folder in (_isolated_runs, home):
        for path in folder.rglob("*"):
            if path.is_file():
                assert TOKEN not in path.read_text(errors="replace"), path
    assert TOKEN not in done.stdout + done.stderr + status.stdout
    # the tunnels were closed
    assert set(Path(tempfile.gettempdir()).glob("mlops-kit-tunnel-*")) <= tunnels_before


def test_microk8s_config_refused_is_a_clear_error(_isolated_runs, tmp_path):
    sshd = Sshd().start()
    try:
        make_run(_isolated_runs, "run-1")
        proc = cli("status", "-p", "parameters/microk8s.yaml", "--set", f"server.host={sshd.url()}",
                   "--set", f"server.identity_file={sshd.user_key}", "--set", f"server.known_hosts={sshd.known_hosts}",
                   home=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "`microk8s config` must print the kubeconfig" in proc.stderr
    finally:
        sshd.stop_all()
