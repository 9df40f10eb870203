"""The request log collected from every replica (issue 21, item 2): the server's admin port
(``serve.monitor.admin_port``: GET /requests, /requests/{name}, never on the public port) and
``mlops-kit monitor`` reading it through the Kubernetes API's pod proxy (a FAKE API, kmock,
whose pod proxy forwards to REAL servers)."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from _serving_process import ServerProcess, free_port

ROWS = [{"mean radius": 14.0}]


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


def _wait_listing(admin: str, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = httpx.get(f"{admin}/requests", timeout=5).json()
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
                           "--admin-port", str(admin_port)).wait_ready()
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
    files = httpx.get(f"{logging_server.admin}/requests", timeout=5).json()
    on_disk = sorted(p.name for p in logging_server.log.iterdir())
    assert [f["name"] for f in files] == on_disk
    for listed in files:
        body = httpx.get(f"{logging_server.admin}/requests/{listed['name']}", timeout=5).content
        assert body == (logging_server.log / listed["name"]).read_bytes()[:len(body)]
        assert len(body) >= listed["size"] > 0


def test_the_public_port_never_serves_the_log(logging_server):
    answer = httpx.get(f"{logging_server.url}/requests", timeout=5)
    assert answer.status_code == 404
    name = httpx.get(f"{logging_server.admin}/requests", timeout=5).json()[0]["name"]
    assert httpx.get(f"{logging_server.url}/requests/{name}", timeout=5).status_code == 404


@pytest.mark.security
@pytest.mark.parametrize("path", [b"/requests/../../../../etc/passwd", b"/requests/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                                  b"/requests/..", b"/requests/", b"/requests//etc/passwd", b"/etc/passwd",
                                  b"/requests/requests-20260101T000000-1-1.jsonl/../../x"])
def test_a_path_outside_the_log_is_refused(logging_server, path):
    answer = _get_raw(logging_server.admin_port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert b"root:" not in answer


@pytest.mark.security
def test_a_symlink_or_a_fifo_named_like_a_log_file_is_neither_listed_nor_served(logging_server):
    link = logging_server.log / "requests-20000101T000000-1-1.jsonl"
    fifo = logging_server.log / "requests-20000101T000000-1-2.jsonl"
    link.symlink_to("/etc/passwd")
    os.mkfifo(fifo)
    try:
        names = [f["name"] for f in httpx.get(f"{logging_server.admin}/requests", timeout=5).json()]
        assert link.name not in names and fifo.name not in names
        for path in (link, fifo):
            answer = httpx.get(f"{logging_server.admin}/requests/{path.name}", timeout=5)
            assert answer.status_code == 404 and b"root:" not in answer.content
    finally:
        link.unlink()
        fifo.unlink()


@pytest.mark.security
def test_the_admin_port_takes_only_get_and_a_bounded_head(logging_server):
    answer = _get_raw(logging_server.admin_port, b"POST /requests HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 ")
    answer = _get_raw(logging_server.admin_port, b"GET /requests HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert httpx.get(f"{logging_server.admin}/requests", timeout=5).status_code == 200   # still serving


def test_an_admin_port_without_a_request_log_is_refused(model_dir):
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(model_dir),
                           "--admin-port", str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "log_requests" in done.stderr and "admin port" in done.stderr and "Traceback" not in done.stderr
