"""The server process: refusing bad artifacts, settings, SIGTERM, the CLI, the image's imports."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from _serving_process import ServerProcess, free_port
from conftest import REPO

SERVE = [sys.executable, "-m", "mlops_kit.serving"]


def refused(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    result = subprocess.run([*SERVE, "--port", str(free_port()), *args], capture_output=True, text=True,
                            cwd=REPO, timeout=120, env={**os.environ, **(env or {})})
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Uvicorn running" not in result.stderr
    return result


@pytest.fixture
def model_copy(model_dir, tmp_path):
    return shutil.copytree(model_dir, tmp_path / "model")


def test_tampered_model_is_refused(model_copy):
    model = model_copy / "model.skops"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    result = refused("--model-dir", str(model_copy))
    assert result.returncode == 1
    assert "does not match its record: sha256 must be" in result.stderr
    assert "it is not loaded" in result.stderr


def test_model_with_untrusted_types_is_refused_even_when_its_record_matches(model_copy):
    import hashlib

    import datetime

    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    data = sio.dumps(LogisticRegression(C=datetime.timedelta(1)))  # holds a type the kit does not trust
    (model_copy / "model.skops").write_bytes(data)
    card = json.loads((model_copy / "model_card.json").read_text())
    card["sha256"] = hashlib.sha256(data).hexdigest()
    (model_copy / "model_card.json").write_text(json.dumps(card))
    result = refused("--model-dir", str(model_copy))
    assert "holds types the kit does not trust: datetime.timedelta" in result.stderr


def test_warm_up_that_disagrees_with_the_recorded_predictions_is_refused(model_copy):
    examples = json.loads((model_copy / "examples.json").read_text())
    examples["predictions"][0] = 1 - examples["predictions"][0]
    (model_copy / "examples.json").write_text(json.dumps(examples))
    result = refused("--model-dir", str(model_copy))
    assert "The warm-up prediction for example 0 must be" in result.stderr


def test_missing_model_and_bad_settings_are_refused(tmp_path, model_dir):
    assert "No model card at" in refused("--model-dir", str(tmp_path)).stderr
    bad_env = refused("--model-dir", str(model_dir), env={"MLOPS_KIT_MAX_ROWS": "many"})
    assert bad_env.returncode == 2 and "MLOPS_KIT_MAX_ROWS: expected an integer; found 'many'" in bad_env.stderr
    bad_policy = refused("--model-dir", str(model_dir), env={"MLOPS_KIT_UNKNOWN_CATEGORIES": "ignore"})
    assert "unknown_categories: expected tolerate or reject; found 'ignore'" in bad_policy.stderr


def test_settings_and_port_from_the_environment(mixed_model_dir):
    port = free_port()
    server = ServerProcess(mixed_model_dir, env={"PORT": str(port), "MLOPS_KIT_MAX_ROWS": "2",
                                                  "MLOPS_KIT_UNKNOWN_CATEGORIES": "reject"},
                           command=[*SERVE, "--model-dir", str(mixed_model_dir)])
    try:
        server.wait_ready()
        meta = httpx.get(f"{server.url}/v2/models/logistic_regression").json()["parameters"]
        assert meta["max_rows"] == 2 and meta["unknown_categories"] == "reject"
    finally:
        server.stop()
    import os
    process = subprocess.Popen([*SERVE, "--model-dir", str(mixed_model_dir)], cwd=REPO,
                               env={**os.environ, "PORT": str(port)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read()
                time.sleep(0.05)
        else:
            pytest.fail("the server did not listen on $PORT")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@pytest.mark.parametrize("args, env, loop", [
    ((), {}, "asyncio"),
    (("--loop", "uvloop"), {}, "uvloop"),
    ((), {"MLOPS_KIT_LOOP": "uvloop"}, "uvloop"),
])
def test_the_event_loop_is_chosen_and_said(model_dir, args, env, loop):
    server = ServerProcess(model_dir, *args, env=env).wait_ready()
    try:
        record = json.loads((model_dir / "examples.json").read_text())["records"]
        assert httpx.post(f"{server.url}/predict", json=record, timeout=30).status_code == 200
    finally:
        server.stop()
    assert f"on the {loop} event loop" in server.process.stderr.read()


def test_an_unknown_event_loop_is_refused(model_dir):
    assert "loop: expected asyncio or uvloop; found 'tokio'" in refused(
        "--model-dir", str(model_dir), env={"MLOPS_KIT_LOOP": "tokio"}).stderr


def test_sigterm_drains_and_exits(model_dir):
    server = ServerProcess(model_dir).wait_ready()
    record = json.loads((model_dir / "examples.json").read_text())["records"]
    with httpx.Client(timeout=30) as client:  # a kept-alive connection must not hold the exit up
        assert client.post(f"{server.url}/predict", json=record).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=30)  # a hang guard, not a timing goal
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    err = server.process.stderr.read()
    assert "Shutting down" in err and "Finished server process" in err and "Traceback" not in err


def test_cli_serves_a_run_by_id(model_dir, _isolated_runs):
    artifacts = _isolated_runs / "20260101-000000-abc" / "artifacts"
    shutil.copytree(model_dir, artifacts)
    server = ServerProcess(model_dir, command=[sys.executable, "-m", "mlops_kit.cli", "serve",
                                               "20260101-000000-abc"])
    try:
        server.wait_ready()
        records = json.loads((artifacts / "examples.json").read_text())
        answer = httpx.post(f"{server.url}/predict", json=records["records"]).json()
        assert answer["predictions"] == records["predictions"]
    finally:
        assert server.stop() in (0, -signal.SIGTERM)


def test_cli_unknown_run_is_a_plain_error(_isolated_runs):
    result = subprocess.run([sys.executable, "-m", "mlops_kit.cli", "serve", "no-such-run"], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"No run 'no-such-run' in {_isolated_runs}" in result.stderr


def test_two_workers_serve(model_dir):
    server = ServerProcess(model_dir, "--workers", "2").wait_ready()
    try:
        records = json.loads((model_dir / "examples.json").read_text())
        for _ in range(4):
            answer = httpx.post(f"{server.url}/predict", json=records["records"])
            assert answer.json()["predictions"] == records["predictions"]
    finally:
        assert server.stop() in (0, -signal.SIGTERM)


def test_the_server_needs_none_of_the_pipeline_dependencies(mixed_model_dir):
    """What the image has: no pandas, pydantic, yaml, click, rich, papermill - the server
    still loads, warms up and predicts, and SERVING_REQUIREMENTS names what it imports."""
    script = f"""
import importlib.abc, importlib.metadata, sys
BLOCKED = {{"pandas", "pyarrow", "polars", "pydantic", "yaml", "click", "rich", "papermill", "nbformat",
           "jupyter_client", "matplotlib"}}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from mlops_kit.serving import SERVING_REQUIREMENTS, create_app
app = create_app({str(mixed_model_dir)!r})
service = app.state.service
batch = service.schema.parse_records(service.predictor.examples["records"])
print(service.predictor.predict(batch)[0].tolist() == service.predictor.examples["predictions"])
for module in ("mlops_kit.params", "mlops_kit.data", "mlops_kit.runner", "mlops_kit.train"):
    assert module not in sys.modules, module
for name in SERVING_REQUIREMENTS:
    importlib.metadata.version(name)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize("protocol_name, nodelay", [("ServingHttpProtocol", 1), ("NoDelayHttpProtocol", 1),
                                                    ("HttpToolsProtocol", 0)])
def test_every_connection_gets_tcp_nodelay(protocol_name, nodelay):
    """A socket asyncio does not know to be TCP (proto 0, as in uvicorn's worker processes)
    gets TCP_NODELAY from the kit's protocol; uvicorn's own leaves it off (the control)."""
    import asyncio
    import socket

    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from mlops_kit.serving._protocol import NoDelayHttpProtocol, ServingHttpProtocol

    protocol_class = {"ServingHttpProtocol": ServingHttpProtocol, "NoDelayHttpProtocol": NoDelayHttpProtocol,
                      "HttpToolsProtocol": HttpToolsProtocol}[protocol_name]

    async def app(scope, receive, send):  # never called: no request is sent
        raise AssertionError

    async def accept_one() -> int:
        with socket.create_server(("127.0.0.1", 0)) as listener, \
                socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            unknown = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=accepted.detach())
            unknown.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            config = Config(app=app, http=protocol_class, lifespan="off", log_level="warning")
            protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
            transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, unknown)
            try:
                return unknown.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            finally:
                transport.close()
                client.close()

    assert asyncio.run(accept_one()) == nodelay
