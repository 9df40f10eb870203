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
"""

from __future__ import annotations

import asyncio
import socket
import time

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from ._validation import InvalidRequest
from .app import ServingApp, header

_JSON_HEADERS = b"content-type: application/json\r\ncontent-length: "


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

    # -- which requests go direct ---------------------------------------------------------
    def on_headers_complete(self) -> None:
        # uvicorn's own: the scope completed, a RequestResponseCycle made and, when no
        # earlier request of this connection is still being answered, _start_asgi_task
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

    def on_message_complete(self) -> None:
        cycle = self._direct
        if cycle is None or cycle is not self.cycle:
            super().on_message_complete()
            return
        if cycle.response_complete:
            return
        chunks = self._chunks
        self._chunks = []
        self._respond(*self._serving.call(self._route, chunks[0] if len(chunks) == 1 else b"".join(chunks)))

    def _respond(self, status: int, content: bytes) -> None:
        """Write the answer with its headers at once; then what uvicorn does after a response."""
        cycle = self._direct
        cycle.response_started = cycle.response_complete = True
        self._chunks = []
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
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
