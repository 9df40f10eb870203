"""The admin listener: the request log, read by `mlops-kit monitor` through the API server's pod proxy.

A second port (``serve.monitor.admin_port``), in the same process and event loop as the
prediction port, started only when a request log is configured. It answers exactly two
paths, with ``Connection: close``:

* ``GET /requests``: a JSON list ``[{"name": ..., "size": ...}]`` of the log's files (regular
  files whose name matches :data:`~mlops_kit.monitor.requestlog.FILE_NAME`), oldest first;
* ``GET /requests/{name}``: one of them, streamed (its size when opened: the writer may append).

Not on the public port: the log holds what users sent. Every request must carry the admin
token (``serve`` setting ``admin_token``, env ``MLOPS_KIT_ADMIN_TOKEN``) in the header
:data:`~._settings.ADMIN_TOKEN_HEADER`: none is 401, another is 403, compared in constant time
(the SHA-256 digests, so not even the length shows). A server without a token refuses every
request (403): the log is never served open, not on 127.0.0.1 either (every user and process of
the machine, and a browser page by DNS rebinding, reach the loopback). On MicroK8s the deploy
keeps a random token per Deployment in a Secret the pod reads (``secretKeyRef``), and
`mlops-kit monitor` reads that Secret and sends the token through the API server's pod proxy:
RBAC on ``pods/proxy`` and on that one Secret decides who reads the log, and another pod of
the cluster that reaches the pod's IP gets 401. The Service does not expose the port.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import stat
from pathlib import Path

import orjson

from .._atomic import sha256_file
from ..monitor.requestlog import FILE_NAME, log_files
from ._settings import ADMIN_TOKEN_HEADER, ENVIRONMENT

logger = logging.getLogger("mlops_kit.serving")

#: the request line and headers of one admin request, at most
MAX_HEAD_BYTES = 8 * 1024
#: seconds a client has to send its request line and headers
HEAD_TIMEOUT = 10.0
CHUNK = 256 * 1024
LISTING = "/requests"
_TOKEN_HEADER = ADMIN_TOKEN_HEADER.encode()


def listing(folder: Path) -> list[dict]:
    """The log's regular files (never a symbolic link), with their sizes, oldest first."""
    files = []
    if not folder.is_dir():   # a server whose sample is 0 writes nothing
        return files
    for path in log_files(folder):
        try:
            info = os.lstat(path)
        except FileNotFoundError:   # rotated away meanwhile
            continue
        if stat.S_ISREG(info.st_mode):
            files.append({"name": path.name, "size": info.st_size})
    return files


def _head(status: int, reason: str, content_type: str, length: int) -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n"
            "connection: close\r\n\r\n").encode()


def _error(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"error": message, "detail": None})
    return _head(status, reason, "application/json", len(body)) + body


class AdminListener:
    """Serves the request log folder ``folder`` on ``host:port`` (:meth:`start`, :meth:`close`) to
    the requests that carry ``token`` (none: to no request)."""

    def __init__(self, folder: str | os.PathLike, host: str, port: int, token: str | None):
        self.folder = Path(folder)
        self.host, self.port = host, port
        # only the digest is kept: compare_digest of two digests takes the same time whatever
        # the length or the content of what a client sent
        self._digest = sha256_file(token.encode()) if token else None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD_BYTES)
        log = logging.getLogger("uvicorn.error")
        log.info("Request log (admin) on http://%s:%d%s", self.host, self.port, LISTING)
        if self._digest is None:
            log.warning("The admin port refuses every request: no admin token is set (%s)",
                        ENVIRONMENT["admin_token"])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.LimitOverrunError, ValueError):
                writer.write(_error(431, "Request Header Fields Too Large",
                                    f"The request head must be at most {MAX_HEAD_BYTES} bytes. Got more instead."))
                return
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                return
            await self._answer(head, writer)
        except (ConnectionError, OSError):
            pass
        except Exception:   # never take the server down; say so once per request
            logger.exception("internal error on the admin port")
        finally:
            try:
                await writer.drain()
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    def _refusal(self, head: bytes) -> bytes | None:
        """The answer to a request without this server's token (None: it has the token)."""
        if self._digest is None:
            return _error(403, "Forbidden", f"The admin port serves the request log only to a request with the "
                                            f"admin token, and this server must have one "
                                            f"({ENVIRONMENT['admin_token']}). Got none instead: it serves no one.")
        given = [value.strip() for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                 if name.lower() == _TOKEN_HEADER]
        if not given:
            return _error(401, "Unauthorized", f"The request must carry the admin token in the {ADMIN_TOKEN_HEADER} "
                                               "header. Got none instead.")
        if len(given) > 1 or not hmac.compare_digest(sha256_file(given[0]), self._digest):
            return _error(403, "Forbidden", f"The admin token in {ADMIN_TOKEN_HEADER} must be this server's. Got "
                                            "another instead.")
        return None

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            writer.write(_error(400, "Bad Request", "The request line must be METHOD PATH HTTP/1.x."))
            return
        refusal = self._refusal(head)
        if refusal is not None:   # before anything about the method or the path
            writer.write(refusal)
            return
        method, target = parts[0], parts[1].decode("latin-1").split("?", 1)[0]
        if method != b"GET":
            writer.write(_error(405, "Method Not Allowed", f"The method must be GET. Got "
                                                           f"{method.decode('latin-1')[:20]} instead."))
            return
        if target == LISTING:
            body = orjson.dumps(listing(self.folder))
            writer.write(_head(200, "OK", "application/json", len(body)) + body)
            return
        name = target[len(LISTING) + 1:] if target.startswith(LISTING + "/") else None
        if name is None or FILE_NAME.fullmatch(name) is None:
            writer.write(_error(404, "Not Found", f"The path must be {LISTING} or {LISTING}/<a log file name "
                                                  f"requests-<time>-<pid>-<n>.jsonl>. Got {target[:200]!r} instead."))
            return
        try:   # O_NOFOLLOW: a symbolic link in the folder is never followed
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            writer.write(_error(404, "Not Found", f"{name} must be a file of the request log. Got none instead."))
            return
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                writer.write(_error(404, "Not Found", f"{name} must be a regular file of the request log."))
                return
            left = info.st_size   # what the file holds now: a line appended meanwhile waits for the next read
            writer.write(_head(200, "OK", "application/x-ndjson", left))
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:   # the file shrank (never by the writer): the client sees a short body
                    break
                left -= len(chunk)
                writer.write(chunk)
                await writer.drain()
