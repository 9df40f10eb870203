"""The body limit at its edge, on both HTTP paths of the real server: a body of exactly
``--max-body-bytes`` is read and answered, one byte more is refused with a 413 - announced
(Content-Length) or not (chunked)."""

from __future__ import annotations

import json

import orjson
import pytest

from _serving_process import ServerProcess
from test_serving_protocol import RECORD, Reader, connect, exchange, request, through_asgi

pytestmark = pytest.mark.security

LIMIT = 2048


@pytest.fixture(scope="module")
def strict(mixed_model_dir):
    process = ServerProcess(mixed_model_dir, "--max-body-bytes", str(LIMIT)).wait_ready()
    yield process
    process.stop()


def body_of(size: int) -> bytes:
    """One valid record, padded with JSON whitespace to ``size`` bytes."""
    body = orjson.dumps([RECORD])
    return body[:-1] + b" " * (size - len(body)) + b"]"


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:])) + b"0\r\n\r\n"


@pytest.mark.parametrize("size, status", [(LIMIT, 200), (LIMIT + 1, 413)])
def test_the_limit_with_a_content_length_on_both_paths(strict, size, status):
    body = body_of(size)
    assert len(body) == size
    direct = exchange(strict, request("/predict", body))
    asgi = through_asgi(strict, "/predict", body)
    assert direct[0] == asgi[0] == status, (direct, asgi)
    if status == 200:
        assert len(json.loads(direct[2])["predictions"]) == 1
    else:
        assert f"at most {LIMIT} bytes. Got {size} bytes instead" in json.loads(direct[2])["error"]


@pytest.mark.parametrize("size, status", [(LIMIT, 200), (LIMIT + 1, 413)])
def test_the_limit_without_a_content_length(strict, size, status):
    with connect(strict) as sock:
        sock.sendall(request("/predict", chunked(body_of(size)), headers={"transfer-encoding": "chunked"}))
        answer = Reader(sock).answer()
    assert answer[0] == status, answer
    if status == 413:
        assert f"Got at least {size} bytes instead" in json.loads(answer[2])["error"]


def test_a_body_in_two_writes_is_gathered_on_the_asgi_path(strict):
    """Expect: 100-continue sends the request through ASGI; the body arrives in two messages."""
    import time

    body = body_of(LIMIT)
    with connect(strict) as sock:
        sock.sendall(request("/predict", headers={"expect": "100-continue"}, length=len(body)))
        reader = Reader(sock)
        assert reader.answer()[0] == 100
        sock.sendall(body[:1000])
        time.sleep(0.3)
        sock.sendall(body[1000:])
        status, _, answer = reader.answer()
    assert status == 200 and len(json.loads(answer)["predictions"]) == 1, answer


def test_a_client_that_leaves_in_the_middle_of_its_body_is_not_answered_nor_counted(strict):
    """The ASGI path: the body half sent, then the connection closed. Nothing is predicted or
    counted for it (an answer to nobody would count a 400 for a body never completed)."""
    import time

    def counted() -> str:
        metrics = exchange(strict, request("/metrics", method="GET"))[2].decode()
        return "\n".join(line for line in metrics.splitlines()
                         if line.startswith("mlops_kit_requests_total") and "predict" in line)

    before = counted()
    body = body_of(LIMIT)
    with connect(strict) as sock:
        sock.sendall(request("/predict", headers={"expect": "100-continue"}, length=len(body)))
        assert Reader(sock).answer()[0] == 100
        sock.sendall(body[:1000])
        time.sleep(0.3)
    time.sleep(0.5)
    assert counted() == before
    assert exchange(strict, request("/predict", body))[0] == 200      # and the server goes on


@pytest.mark.parametrize("size, status", [(LIMIT, 200), (LIMIT + 1, 413)])
def test_the_limit_without_a_content_length_on_the_asgi_path(strict, size, status):
    with connect(strict) as sock:
        sock.sendall(request("/predict", headers={"expect": "100-continue", "transfer-encoding": "chunked"}))
        reader = Reader(sock)
        assert reader.answer()[0] == 100
        sock.sendall(chunked(body_of(size)))
        answer = reader.answer()
    assert answer[0] == status, answer
    if status == 413:
        assert "Got at least" in json.loads(answer[2])["error"]
