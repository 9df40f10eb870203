"""The HTTP protocol the server runs: uvicorn's httptools protocol, with TCP_NODELAY on every
connection and the prediction requests answered straight from the parser's callbacks.

**TCP_NODELAY.** asyncio's loop sets it only on sockets it knows to be TCP, and the listening
socket uvicorn hands to its worker processes (``--workers 2``) does not say so. An answer
sent in two writes then waits for the client's delayed acknowledgement (Nagle): measured,
700 requests/s at a p50 of 44 ms instead of about 5,000.

**Prediction requests without ASGI.** For every request uvicorn builds an ASGI scope, starts
an asyncio task, hands the body over in ``receive()`` messages (one loop iteration per chunk)
and writes the answer in two ``send()`` calls - together more time than an ONNX model takes
to predict. A ``POST /predict`` or ``POST /v2/models/{name}/infer`` is a request whose answer
needs nothing but its body, so this protocol answers it itself: the body gathered as the
parser hands it over (against the body limit), the answer computed when the message is
complete, and written with its headers in one ``write``. The checks, answers and metrics are
the app's own (:class:`~mlops_kit.serving.app.ServingApp`: ``route``, ``check_request``,
``call``, ``record``); every other request - another method or path, ``Expect:
100-continue``, a request pipelined behind one still being answered - goes through ASGI as
before. ``tests/test_serving_protocol.py`` holds both ways to the same answers.

**Limits** (docs/security.md, "The ONNX path and the HTTP limits"). A request's line and
headers are at most :data:`~._settings.MAX_HEAD_BYTES` (431 and closed beyond: the parser would
otherwise buffer a header of any length), and must arrive within ``header_timeout`` seconds of
the connection or of the request's first byte (408 and closed: uvicorn restarts its keep-alive
timer on every byte, so a client trickling a byte at a time held its connection for ever);
at most ``max_connections`` connections are open at once (one more: 503 and closed).

**Memory.** A connection's protocol and its current request (``RequestResponseCycle``) refer
to each other (``cycle.on_response``); uvicorn's ``run_asgi`` breaks that loop when the app
returns, but a request answered here never runs it. Left alone, every closed connection kept
its headers until a full garbage collection - rare after the server's ``gc.freeze()``
(measured: 2.1 GB after 20 connections of 100 MB of headers). The loop is broken when the
answer is written and when the connection is lost.
"""

from __future__ import annotations

import asyncio
import socket
import time

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from ._settings import MAX_HEAD_BYTES, ServeSettings
from ._validation import InvalidRequest
from .app import ServingApp, error_body, header

_JSON_HEADERS = b"content-type: application/json\r\ncontent-length: "


def _nothing() -> None:
    """What a finished request's ``on_response`` becomes (as uvicorn's ``run_asgi`` does)."""


class NoDelayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY set on every connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        connection = transport.get_extra_info("socket")
        if connection is not None and connection.family in (socket.AF_INET, socket.AF_INET6):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class ServingHttpProtocol(NoDelayHttpProtocol):
    """:class:`NoDelayHttpProtocol` that answers the app's prediction requests itself (see the
    module's text); any app other than a :class:`ServingApp` is served as uvicorn does."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._serving = self.app if isinstance(self.app, ServingApp) else None
        self._limit = self._serving.service.settings.max_body_bytes if self._serving else 0
        self._in_headers = False  # on_headers_complete is deciding how the request goes
        self._direct: RequestResponseCycle | None = None  # the request this protocol answers
        self._route = None
        self._started = 0.0
        self._chunks: list[bytes] = []
        self._size = 0
        self._reading_paused_for_writes = False
        settings = self._serving.service.settings if self._serving else ServeSettings()
        self._max_connections = settings.max_connections
        self._header_timeout = settings.header_timeout
        self._reading_head = True   # between requests or in a request's line and headers
        self._head_bytes = 0        # bytes fed to the parser since then
        self._completed = 0         # requests read whole on this connection
        self._head_timer: asyncio.TimerHandle | None = None

    # -- the limits: connections, the size and time of a request's head ------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self.logger.warning("Refused a connection: %d are open (max_connections).", len(self.connections) - 1)
            self._refuse(503, f"The server takes at most {self._max_connections} connections at once "
                              "(max_connections). Got one more instead; try again later.")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_head_timer()
        # the protocol <-> request loops (see the module's text): the request answered here,
        # and requests pipelined behind it that will never start
        if self._direct is not None:
            self._direct.on_response = _nothing
            self._direct = None
        for cycle, _ in self.pipeline:
            cycle.on_response = _nothing
        self.pipeline.clear()

    def data_received(self, data: bytes) -> None:
        # the parser is fed at most what the head's limit leaves room for, one slice at a time
        while self._reading_head and len(data) > MAX_HEAD_BYTES - self._head_bytes:
            room = MAX_HEAD_BYTES - self._head_bytes
            completed = self._completed
            super().data_received(data[:room])
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # refused (400), or upgraded: the rest is not this protocol's
            data = data[room:]
            if self._reading_head and self._completed == completed:
                self._refuse(431, f"The request line and headers must be at most {MAX_HEAD_BYTES} bytes. "
                                  f"Got more instead.")
                return
            # the head ended in the slice (its body follows), or whole requests did and the
            # next one began there: that one's head is counted from the slice's end (so a
            # pipelined head may reach twice the limit, never more)
        if self._reading_head:
            self._head_bytes += len(data)
        if data:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_message_complete(self) -> None:
        self._reading_head, self._head_bytes = True, 0
        self._completed += 1
        self._on_message_complete()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(408, f"The request line and headers must arrive within {self._header_timeout:g} s. "
                              "Got them incomplete instead.")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` before any request was read (as uvicorn's own 400), and close."""
        content = error_body(message)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [_JSON_HEADERS, str(len(content)).encode(), b"\r\nconnection: close\r\n\r\n", content]
        self.transport.write(b"".join(head))
        self.transport.close()

    # -- which requests go direct ---------------------------------------------------------
    def on_headers_complete(self) -> None:
        # uvicorn's own: the scope completed, a RequestResponseCycle made and, when no
        # earlier request of this connection is still being answered, _start_asgi_task
        self._reading_head = False
        self._cancel_head_timer()
        self._in_headers = self._serving is not None and not self.expect_100_continue
        try:
            super().on_headers_complete()
        finally:
            self._in_headers = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:  # type: ignore[override]
        if self._in_headers and cycle.scope["method"] == "POST" and app is self.app:
            route = self._serving.route(cycle.scope["path"])
            if route is not None:
                self._begin(cycle, route)
                return
        super()._start_asgi_task(cycle, app)

    # -- a direct request: headers, body, answer ------------------------------------------
    def _begin(self, cycle: RequestResponseCycle, route) -> None:
        self._direct, self._route, self._started = cycle, route, time.perf_counter()
        self._chunks, self._size = [], 0
        try:
            self._serving.check_request(route, header(cycle.scope, b"content-length"))
        except InvalidRequest as exc:
            self._respond(*self._serving.refuse(exc))

    def on_body(self, body: bytes) -> None:
        cycle = self._direct
        if cycle is None or cycle is not self.cycle:
            super().on_body(body)
            return
        if cycle.response_complete:  # answered early (413, 404): the rest is read and dropped
            return
        self._size += len(body)
        if self._size > self._limit:
            self._respond(*self._serving.refuse(self._serving.service.too_large(self._size, at_least=True)))
            return
        self._chunks.append(body)

    def _on_message_complete(self) -> None:
        cycle = self._direct
        if cycle is None or cycle is not self.cycle:
            super().on_message_complete()
            return
        if cycle.response_complete:
            return
        chunks = self._chunks
        self._chunks = []
        self._respond(*self._serving.call(self._route, chunks[0] if len(chunks) == 1 else b"".join(chunks),
                                          header(cycle.scope, b"x-request-id")))

    def _respond(self, status: int, content: bytes, request_id: str | None = None) -> None:
        """Write the answer with its headers at once; then what uvicorn does after a response."""
        cycle = self._direct
        cycle.response_started = cycle.response_complete = True
        self._chunks = []
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        if request_id is not None:
            head += [b"x-request-id: ", request_id.encode(), b"\r\n"]
        head += [_JSON_HEADERS, str(len(content)).encode(), b"\r\n"]
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", content]
        self.transport.write(b"".join(head))
        self._serving.record(self._route.endpoint, "POST", status, self._started)
        if self.access_log:
            scope = cycle.scope
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                                    get_path_with_query_string(scope), scope["http_version"], status)
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()  # uvicorn's: keep-alive timer, the next pipelined request
        cycle.on_response = _nothing  # the loop protocol <-> cycle (see the module's text)
        if self.flow.write_paused and not self.transport.is_closing():
            # a client that sends requests without reading the answers: stop reading until
            # the answers drain, as uvicorn's send() would by waiting
            self.flow.pause_reading()
            self._reading_paused_for_writes = True

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._reading_paused_for_writes:
            self._reading_paused_for_writes = False
            self.flow.resume_reading()
