"""The server's HTTP protocol (``mlops_kit.serving._protocol.ServingHttpProtocol``), for real:
a ``python -m mlops_kit.serving`` process, raw sockets, bytes on the wire.

Prediction requests are answered from the parser's callbacks (one write, no ASGI task);
everything else goes through uvicorn's ASGI path. A request with ``Expect: 100-continue``
takes the ASGI path in the same server (its interim ``100 Continue`` shows which path
answered), so the two paths are held to the same answers on the same bodies.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _serving_process import ServerProcess
from test_serving import MODEL_NAME, bodies as fuzz_bodies

RECORD = {"age": 41.0, "income": 52_000.0, "city": "paris", "plan": "pro"}


@pytest.fixture(scope="module")
def server(mixed_model_dir):
    process = ServerProcess(mixed_model_dir).wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def strict(mixed_model_dir):
    process = ServerProcess(mixed_model_dir, "--max-rows", "5", "--max-body-bytes", "2048").wait_ready()
    yield process
    process.stop()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(path: str, body: bytes = b"", *, method: str = "POST", version: str = "1.1",
            headers: dict[str, str] | None = None, length: int | None = None) -> bytes:
    """The request's bytes; ``length``: the Content-Length to announce (default: the body's)."""
    lines = [f"{method} {path} HTTP/{version}", "host: test"]
    if method == "POST" and not any(k.lower() == "transfer-encoding" for k in (headers or {})):
        lines.append(f"content-length: {len(body) if length is None else length}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """HTTP/1.1 answers read off a socket, one at a time."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before an answer; read {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"header {name} twice in {head!r}"
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("closed inside a body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self) -> bool:
        """True when the server closed the connection at once (well before uvicorn's 5 s
        keep-alive timeout would)."""
        self.sock.settimeout(1)
        return not self.buffer and self.sock.recv(1) == b""


def exchange(server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(server) as sock:
        sock.sendall(raw)
        return Reader(sock).answer()


def through_asgi(server, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """The same request, sent with ``Expect: 100-continue``: uvicorn's ASGI path answers it
    (its interim ``100 Continue`` comes when the app reads the body)."""
    with connect(server) as sock:
        sock.sendall(request(path, headers={"expect": "100-continue"}, length=len(body)))
        reader = Reader(sock)
        first = reader.answer()
        if first[0] != 100:  # refused before the body was asked for (a wrong model name, a length)
            return first
        sock.sendall(body)
        return reader.answer()


# -- the two paths give the same answers ---------------------------------------------------

PATHS = ["/predict", f"/v2/models/{MODEL_NAME}/infer", "/v2/models/random_forest/infer"]


@pytest.mark.contract
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("body", [
    orjson.dumps([RECORD]), orjson.dumps([RECORD] * 3), orjson.dumps({k: [v] for k, v in RECORD.items()}),
    orjson.dumps([{**RECORD, "age": "old"}]), orjson.dumps([{**RECORD, "colour": "red"}]), b"[{", b"",
    orjson.dumps({"inputs": [{"name": k, "datatype": "FP64" if isinstance(v, float) else "BYTES", "shape": [1],
                              "data": [v]} for k, v in RECORD.items()]}),
], ids=["one-row", "three-rows", "columns", "bad-type", "unknown-field", "bad-json", "empty", "v2"])
def test_direct_and_asgi_paths_answer_alike(server, path, body):
    direct = exchange(server, request(path, body))
    asgi = through_asgi(server, path, body)
    assert direct[0] == asgi[0], (direct, asgi)
    if direct[0] == 200:   # each answer has a request id of its own (generated: 32 hex digits)
        assert re.fullmatch(r"[0-9a-f]{32}", direct[1]["x-request-id"]) and asgi[1]["x-request-id"]
        if "/v2/" in path:
            assert orjson.loads(direct[2])["id"] == direct[1]["x-request-id"]
        direct = (direct[0], direct[1], direct[2].replace(direct[1]["x-request-id"].encode(), b"ID"))
        asgi = (asgi[0], asgi[1], asgi[2].replace(asgi[1]["x-request-id"].encode(), b"ID"))
    assert direct[2] == asgi[2]
    for header in ("content-type", "content-length"):
        assert direct[1][header] == asgi[1][header]
    assert "date" in direct[1] and "server" not in direct[1]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=fuzz_bodies, path=st.sampled_from(PATHS))
def test_fuzz_direct_and_asgi_paths_answer_alike(strict, body, path):
    direct, asgi = exchange(strict, request(path, body)), through_asgi(strict, path, body)
    assert (direct[0], direct[2]) == (asgi[0], asgi[2]), body


# -- HTTP/1.1 on the direct path -------------------------------------------------------------

def test_pipelined_requests_are_answered_in_order(server):
    one, three = orjson.dumps([RECORD]), orjson.dumps([RECORD] * 3)
    with connect(server) as sock:
        # direct, ASGI (a GET), direct, ASGI behind a direct one, direct: all in one write
        sock.sendall(request("/predict", one) + request("/v2/health/ready", method="GET")
                     + request("/predict", three) + request("/v2", method="GET") + request("/predict", b"[1]"))
        reader = Reader(sock)
        answers = [reader.answer() for _ in range(5)]
    assert [a[0] for a in answers] == [200, 200, 200, 200, 422]
    assert len(json.loads(answers[0][2])["predictions"]) == 1
    assert json.loads(answers[1][2]) == {"ready": True}
    assert len(json.loads(answers[2][2])["predictions"]) == 3
    assert json.loads(answers[3][2])["name"] == "mlops-kit"


def test_a_body_in_pieces_is_gathered(server):
    body = orjson.dumps([RECORD] * 4)
    with connect(server) as sock:
        sock.sendall(request("/predict", body)[:-len(body)])
        for start in range(0, len(body), 7):
            time.sleep(0.01)
            sock.sendall(body[start:start + 7])
        status, _, answer = Reader(sock).answer()
    assert status == 200 and len(json.loads(answer)["predictions"]) == 4


def test_a_chunked_body_is_gathered(server):
    body = orjson.dumps([RECORD] * 2)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    status, _, answer = exchange(server, request("/predict", chunked, headers={"transfer-encoding": "chunked"}))
    assert status == 200 and len(json.loads(answer)["predictions"]) == 2


@pytest.mark.parametrize("version, headers", [("1.1", {"connection": "close"}), ("1.0", {})])
def test_connection_close_and_http_1_0_close_after_the_answer(server, version, headers):
    with connect(server) as sock:
        sock.sendall(request("/predict", orjson.dumps([RECORD]), version=version, headers=headers))
        reader = Reader(sock)
        status, answer_headers, _ = reader.answer()
        assert status == 200 and answer_headers.get("connection") == "close"
        assert reader.closed()


def test_keep_alive_serves_many_requests_on_one_connection(server):
    with connect(server) as sock:
        reader = Reader(sock)
        for rows in (1, 2, 3):
            sock.sendall(request("/predict", orjson.dumps([RECORD] * rows)))
            status, headers, answer = reader.answer()
            assert status == 200 and "connection" not in headers
            assert len(json.loads(answer)["predictions"]) == rows


def test_content_length_over_the_limit_is_refused_before_the_body(strict):
    with connect(strict) as sock:
        sock.sendall(request("/predict", length=4096))
        status, _, answer = Reader(sock).answer()  # no body sent at all
    assert status == 413 and "at most 2048 bytes. Got 4096 bytes instead" in json.loads(answer)["error"]


def test_a_body_over_the_limit_without_its_length_is_refused_and_the_connection_goes_on(strict):
    big = b"[" + b" " * 3000 + b"]"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
    with connect(strict) as sock:
        sock.sendall(request("/predict", chunked, headers={"transfer-encoding": "chunked"}))
        reader = Reader(sock)
        status, _, answer = reader.answer()
        assert status == 413 and "Got at least" in json.loads(answer)["error"]
        sock.sendall(request("/predict", orjson.dumps([RECORD])))  # the rest was read and dropped
        assert reader.answer()[0] == 200


def test_wrong_model_name_is_refused_before_the_body(server):
    with connect(server) as sock:
        sock.sendall(request("/v2/models/nope/infer", length=99))
        status, _, answer = Reader(sock).answer()
    assert status == 404 and "'nope'" in json.loads(answer)["error"]


def test_a_client_that_does_not_read_its_answers_is_held_back_not_buffered_without_end(server):
    """Pipelined requests whose answers are not read: once the answers fill the socket's
    buffers the server stops reading that connection (flow control, as uvicorn's ASGI path
    does by waiting in send), keeps serving others, and every answer arrives once the client
    reads. Without the hold the server would read all 48 MB and keep their answers in memory."""
    count = 4000
    one = request("/predict", orjson.dumps([RECORD] * 150))  # ~12 kB in, ~9 kB out
    payload = one * count
    with connect(server) as flood:
        flood.setblocking(False)
        # send until the server has taken nothing for 2 s (held back), or everything (not)
        sent, progress, deadline = 0, time.monotonic(), time.monotonic() + 60
        while sent < len(payload) and time.monotonic() - progress < 2 and time.monotonic() < deadline:
            try:
                sent += flood.send(payload[sent:sent + 65536])
                progress = time.monotonic()
            except BlockingIOError:
                time.sleep(0.05)
        assert sent < len(payload), "the server read every request while none of its answers was read"
        assert exchange(server, request("/v2/health/ready", method="GET"))[0] == 200  # others are served

        flood.setblocking(True)
        flood.settimeout(30)
        rest = threading.Thread(target=flood.sendall, args=(payload[sent:],), daemon=True)
        rest.start()
        reader = Reader(flood)
        statuses = [reader.answer()[0] for _ in range(count)]
        rest.join(30)
    assert statuses == [200] * count


def test_direct_answers_are_counted_and_logged(mixed_model_dir):
    logged = ServerProcess(mixed_model_dir, "--access-log").wait_ready()
    try:
        def counted(status: str) -> float:
            text = exchange(logged, request("/metrics", method="GET"))[2].decode()
            found = re.search(
                rf'mlops_kit_requests_total{{endpoint="/predict",method="POST",status="{status}"}} (\S+)', text)
            return float(found.group(1)) if found else 0.0

        ok, bad = counted("200"), counted("422")
        for _ in range(3):
            exchange(logged, request("/predict", orjson.dumps([RECORD])))
        exchange(logged, request("/predict", b"[1]"))
        assert (counted("200"), counted("422")) == (ok + 3, bad + 1)
    finally:
        logged.stop()
    output = logged.process.stdout.read() + logged.process.stderr.read()
    assert output.count('"POST /predict HTTP/1.1" 200') == 3 and output.count('"POST /predict HTTP/1.1" 422') == 1


def test_sigterm_waits_for_a_request_whose_body_is_still_arriving(mixed_model_dir):
    """Graceful drain on the direct path: a request half-sent when SIGTERM comes is answered
    (and its connection closed) once its body is complete; then the server exits."""
    draining = ServerProcess(mixed_model_dir).wait_ready()
    body = orjson.dumps([RECORD] * 2)
    try:
        with connect(draining) as sock:
            sock.sendall(request("/predict", body)[:-10])
            time.sleep(0.3)  # the headers are parsed: the request is in flight
            draining.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the server is draining, waiting for this connection
            assert draining.process.poll() is None
            sock.sendall(body[-10:])
            reader = Reader(sock)
            status, headers, answer = reader.answer()
            assert status == 200 and headers.get("connection") == "close"
            assert len(json.loads(answer)["predictions"]) == 2
        assert draining.process.wait(timeout=30) in (0, -signal.SIGTERM)  # a hang guard, not a timing goal
    finally:
        draining.stop()
