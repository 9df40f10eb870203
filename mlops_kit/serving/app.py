"""The ASGI app: ``create_app(model_dir)``.

Endpoints: ``POST /predict`` (records or columns), the Open Inference Protocol v2 REST
subset (``/v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/ready``, ``/v2/models/{name}/infer``), ``/metrics`` (Prometheus),
``/openapi.json`` and ``/docs``.

The model is loaded, its sha256 and types checked, and a warm-up prediction of
``examples.json`` compared with the recorded answers before the app exists: a server that
listens is ready. The two prediction endpoints are answered by :class:`ServingApp` in raw
ASGI, every other path by a Starlette app. Predictions run on the event loop: tens of
microseconds (ONNX) to a millisecond (skops), less than a hand-off to a thread would cost;
one worker serves one request at a time (docs/architecture.md, "The model server").
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..monitor import requestlog
from ._metrics import MetricsMiddleware, MonitorCollector, ServingMetrics
from ._openapi import docs_page, openapi_document
from ._predictor import Predictor, open_predictor
from ._settings import INSTANCE_ENV, INSTANCE_HEADER, ServeSettings
from ._validation import InvalidRequest, show

logger = logging.getLogger("mlops_kit.serving")

#: environment variable naming the model folder (worker processes, the image)
MODEL_DIR_ENV = "MLOPS_KIT_MODEL_DIR"
_JSON = "application/json"
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=_DUMP_OPTIONS), status_code=status, media_type=_JSON)


def _datatype(values: np.ndarray) -> str:
    return {"i": "INT64", "u": "UINT64", "f": "FP64", "b": "BOOL"}.get(values.dtype.kind, "BYTES")


class ModelService:
    """The request handlers of one loaded model."""

    def __init__(self, predictor: Predictor, settings: ServeSettings):
        self.predictor = predictor
        self.settings = settings
        self.schema = predictor.request_schema
        self.name = settings.model_name or str(predictor.card.get("model") or "model")
        self.version = predictor.version
        self.ready = False
        instance = os.environ.get(INSTANCE_ENV)
        self.ready_headers = {INSTANCE_HEADER: instance} if instance and instance.isalnum() else None
        self.metrics = ServingMetrics({
            "name": self.name, "version": predictor.version, "estimator": predictor.estimator_name,
            "task": predictor.task, "sha256": str(predictor.card.get("sha256", "")),
            "created": str(predictor.card.get("created", "")), "path": predictor.path})
        self.live_monitor = _open_live(predictor, settings)
        self.request_log = _open_request_log(predictor, settings)
        self.monitor_metrics = MonitorCollector(self.live_monitor, self.request_log, self.metrics.registry)
        self._monitor_failed = False
        #: where the admin port listens (settings.admin_port): the serving host, set by serve()
        self.admin_host = "127.0.0.1"
        self.openapi = orjson.dumps(openapi_document(self))
        self.docs = docs_page(self)

    def observe(self, batch: Any, predictions: np.ndarray, probabilities: Any, request_id: str) -> None:
        """What monitoring does on the request path: count the batch and its answers in the
        profile's bins, offer the request to the log's writer (never blocks). A failure here is
        logged once and never fails the request."""
        try:
            if self.live_monitor is not None:
                self.live_monitor.observe(batch, predictions)
            log = self.request_log
            if log is not None and log.wants(batch.rows):   # the sampling decision first: nothing made otherwise
                log.queue(request_id, batch, predictions, probabilities, batch.rows)   # columns made by the writer
        except Exception:
            if not self._monitor_failed:
                self._monitor_failed = True
                logger.exception("monitoring failed on a request (answered all the same; logged once)")

    # -- the prediction endpoints: body in, JSON out (called by ServingApp) ---------------------
    def check_length(self, length: bytes | None) -> None:
        """The Content-Length header, when sent, is a number within the body limit."""
        if length is None:
            return
        if not length.isdigit():
            got = length.decode("latin-1")
            raise InvalidRequest(f"The Content-Length header must be a number of bytes. Got {got!r} instead.",
                                 status=400, field="Content-Length", expected="a number", got=got)
        if int(length) > self.settings.max_body_bytes:
            raise self.too_large(int(length))

    def too_large(self, size: int, at_least: bool = False) -> InvalidRequest:
        got = f"{'at least ' if at_least else ''}{size} bytes"
        return InvalidRequest(f"The body must be at most {self.settings.max_body_bytes} bytes. Got {got} instead.",
                              status=413, expected=f"at most {self.settings.max_body_bytes} bytes", got=got)

    def check_name(self, name: str) -> None:
        if name != self.name:
            raise InvalidRequest(f"The model name must be {self.name!r} (the model this server serves). "
                                 f"Got {name!r} instead.", status=404, field="name", expected=self.name, got=name)

    def predict(self, body: bytes, request_id: str) -> tuple[bytes, str]:
        """``POST /predict``: records or columns in; predictions (and probabilities) out.
        ``request_id``: the client's valid ``x-request-id``, else generated (answered as a header)."""
        batch = self.schema.parse_body(body)
        predictions, probabilities = self.predictor.predict(batch)
        self.metrics.rows.inc(batch.rows)
        self.observe(batch, predictions, probabilities, request_id)
        answer: dict[str, Any] = {"model": self.name, "version": self.version,
                                  "predictions": predictions if predictions.dtype.kind in "biuf"
                                  else predictions.tolist()}
        if probabilities is not None:
            answer["classes"] = self.predictor.classes
            answer["probabilities"] = probabilities
        return orjson.dumps(answer, option=_DUMP_OPTIONS), request_id

    def infer(self, body: bytes, request_id: str) -> tuple[bytes, str]:
        """``POST /v2/models/{name}/infer``: an Open Inference Protocol v2 request. Its ``id``
        (validated) is the request's id, echoed; without one, ``request_id`` is, and answered."""
        batch, payload = self.schema.parse_v2(self.schema.load_json(body))
        if "id" in payload:
            if not requestlog.valid_request_id(payload["id"]):
                raise InvalidRequest(f"\"id\" must be 1 to 128 characters among A-Z a-z 0-9 . _ : - . Got "
                                     f"{show(payload['id'])} instead.", status=400, field="id",
                                     expected="1 to 128 characters among A-Z a-z 0-9 . _ : -", got=show(payload["id"]))
            request_id = payload["id"]
        known = ["predict"] + (["predict_proba"] if self.predictor.classes is not None else [])
        wanted = payload.get("outputs")
        if wanted is None:
            names = known
        else:
            if type(wanted) is not list or not all(type(o) is dict and o.get("name") in known for o in wanted):
                raise InvalidRequest(f"\"outputs\" must be a list of {{\"name\": ...}} with names among {known}. "
                                     f"Got {show(wanted)} instead.", field="outputs",
                                     expected=f"names among {known}", got=show(wanted))
            names = [o["name"] for o in wanted]
        predictions, probabilities = self.predictor.predict(batch)
        self.metrics.rows.inc(batch.rows)
        self.observe(batch, predictions, probabilities, request_id)
        outputs = []
        for name in names:
            if name == "predict":
                datatype = _datatype(predictions)
                data = predictions.tolist() if datatype != "BYTES" else [str(v) for v in predictions.tolist()]
                outputs.append({"name": "predict", "datatype": datatype, "shape": [batch.rows], "data": data})
            else:
                outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": list(probabilities.shape),
                                "data": probabilities.ravel(),
                                "parameters": {"classes": [str(c) for c in self.predictor.classes]}})
        answer: dict[str, Any] = {"model_name": self.name, "model_version": self.version, "id": request_id,
                                  "outputs": outputs}
        return orjson.dumps(answer, option=_DUMP_OPTIONS), request_id

    # -- the other endpoints (Starlette routes) --------------------------------------------
    def _check_name(self, request: Request) -> None:
        self.check_name(request.path_params["name"])

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready_endpoint(self, request: Request) -> Response:
        response = _json({"ready": self.ready}, 200 if self.ready else 503)
        if self.ready_headers:
            response.headers.update(self.ready_headers)
        return response

    async def model_ready(self, request: Request) -> Response:
        self._check_name(request)
        return _json({"name": self.name, "ready": self.ready}, 200 if self.ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        from .. import __version__
        return _json({"name": "mlops-kit", "version": __version__, "extensions": []})

    async def model_metadata(self, request: Request) -> Response:
        self._check_name(request)
        outputs = [{"name": "predict", "datatype": "BYTES" if self.predictor.classes and any(
            isinstance(c, str) for c in self.predictor.classes) else ("INT64" if self.predictor.classes else "FP64"),
                    "shape": [-1]}]
        if self.predictor.classes is not None:
            outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(self.predictor.classes)]})
        return _json({"name": self.name, "versions": [self.predictor.version], "platform": self.predictor.platform,
                      "inputs": [{"name": f.name, "datatype": f.datatype, "shape": [-1]} for f in self.schema.features],
                      "outputs": outputs,
                      "parameters": {"task": self.predictor.task, "estimator": self.predictor.estimator_name,
                                     "classes": self.predictor.classes,
                                     "features": [f.metadata() for f in self.schema.features],
                                     "unknown_categories": self.settings.unknown_categories,
                                     "max_rows": self.settings.max_rows,
                                     "max_body_bytes": self.settings.max_body_bytes}})

    async def metrics_endpoint(self, request: Request) -> Response:
        live = self.live_monitor
        if live is not None:   # the drift of the window: judged off the event loop, on a snapshot
            self.monitor_metrics.judgement = await asyncio.to_thread(live.judge, live.snapshot())
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def openapi_endpoint(self, request: Request) -> Response:
        return Response(self.openapi, media_type=_JSON)

    async def docs_endpoint(self, request: Request) -> Response:
        return HTMLResponse(self.docs)

    async def root(self, request: Request) -> Response:
        return RedirectResponse("/docs")


_SERVER_ERROR = orjson.dumps({"error": "Internal server error: the request could not be answered; see the server log.",
                              "detail": None})
_INFER_PREFIX, _INFER_SUFFIX = "/v2/models/", "/infer"


def error_body(message: str) -> bytes:
    """The JSON of an error answer that has no field to name."""
    return orjson.dumps({"error": message, "detail": None})


def _wrong_method(method: str) -> str:
    return f"The method must be one this endpoint takes. Got {method} instead."


class _Disconnected(Exception):
    """The client went away before its body arrived."""


class PredictionRoute(NamedTuple):
    """A prediction endpoint a path leads to: its metrics label, its handler (body in,
    answer out) and, for v2, the model name in the path."""

    endpoint: str
    handler: Callable[[bytes, str], tuple[bytes, str]]
    name: str | None


class ServingApp:
    """The server's ASGI app.

    The two prediction endpoints (``POST /predict``, ``POST /v2/models/{name}/infer``) are
    answered here, in raw ASGI: the body read against its limit, the service's answer sent
    with two messages, the request counted and timed - no request, response or middleware
    objects on the path every prediction takes. Every other path, and the lifespan, is the
    Starlette app's (``other``), behind :class:`MetricsMiddleware`.

    The steps of a prediction request (:meth:`route`, :meth:`check_request`, :meth:`call`,
    :meth:`record`) are public so that the server's HTTP protocol
    (:class:`~mlops_kit.serving._protocol.ServingHttpProtocol`) answers a POST from the
    parser's callbacks with exactly the same checks, answers and metrics, without ASGI.
    """

    def __init__(self, service: ModelService, other: Starlette):
        self.service = service
        self.other = other
        self.state = other.state
        metrics = service.metrics
        self._latency = {path: metrics.latency.labels(path) for path in ("/predict", "/v2/models/{name}/infer")}
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._predict = PredictionRoute("/predict", service.predict, None)

    def route(self, path: str) -> PredictionRoute | None:
        """The prediction endpoint ``path`` leads to, or None (a path for :attr:`other`)."""
        if path == "/predict":
            return self._predict
        if path.startswith(_INFER_PREFIX) and path.endswith(_INFER_SUFFIX):
            name = path[len(_INFER_PREFIX):-len(_INFER_SUFFIX)]
            if name and "/" not in name:
                return PredictionRoute("/v2/models/{name}/infer", self.service.infer, name)
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            route = self.route(scope["path"])
            if route is not None:
                await self._answer(scope, receive, send, route)
                return
        await self.other(scope, receive, send)

    def check_request(self, route: PredictionRoute, content_length: bytes | None) -> None:
        """What is known before the body: the model name in the path, the Content-Length.
        Raises :class:`InvalidRequest`."""
        if route.name is not None:
            self.service.check_name(route.name)
        self.service.check_length(content_length)

    def call(self, route: PredictionRoute, body: bytes, request_id: bytes | None = None) -> tuple[int, bytes, str]:
        """The status, JSON answer and request id of a POST whose body has arrived: 200, a 4xx
        that says what is wrong, or 500 (logged). ``request_id``: the ``x-request-id`` header
        sent, if any (echoed when valid, else an id is generated)."""
        rid = request_id.decode("latin-1") if request_id is not None else None
        if rid is None or not requestlog.valid_request_id(rid):
            rid = requestlog.new_request_id()
        try:
            content, rid = route.handler(body, rid)
            return 200, content, rid
        except InvalidRequest as exc:
            return (*self.refuse(exc), rid)
        except Exception:
            logger.exception("internal error answering POST %s", route.endpoint)
            return 500, _SERVER_ERROR, rid

    @staticmethod
    def refuse(exc: InvalidRequest) -> tuple[int, bytes]:
        return exc.status, orjson.dumps(exc.body())

    def record(self, endpoint: str, method: str, status: int, started: float) -> None:
        """Count the answer and time it (``started``: ``time.perf_counter()`` at the request)."""
        key = (endpoint, method, status)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self.service.metrics.requests.labels(endpoint, method, str(status))
        counter.inc()
        self._latency[endpoint].observe(time.perf_counter() - started)

    async def _answer(self, scope, receive, send, route: PredictionRoute) -> None:
        started = time.perf_counter()
        headers = [(b"content-type", b"application/json")]
        if scope["method"] != "POST":
            status = 405
            headers.append((b"allow", b"POST"))
            content = orjson.dumps({"error": _wrong_method(scope["method"]), "detail": None})
        else:
            try:
                self.check_request(route, header(scope, b"content-length"))
                body = await self._body(receive)
            except InvalidRequest as exc:
                status, content = self.refuse(exc)
            except _Disconnected:
                return
            else:
                status, content, request_id = self.call(route, body, header(scope, b"x-request-id"))
                headers.append((b"x-request-id", request_id.encode()))
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        self.record(route.endpoint, scope["method"], status, started)

    async def _body(self, receive) -> bytes:
        service = self.service
        limit = service.settings.max_body_bytes
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise service.too_large(size, at_least=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def header(scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in an ASGI scope, or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    return _json(exc.body(), exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"The path must be one of the server's endpoints (see /docs). Got {request.url.path} instead."
    elif exc.status_code == 405:
        message = _wrong_method(request.method)
    else:
        message = str(exc.detail)
    return Response(orjson.dumps({"error": message, "detail": None}), status_code=exc.status_code,
                    media_type=_JSON, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.exception("internal error answering %s %s", request.method, request.url.path)
    return Response(_SERVER_ERROR, status_code=500, media_type=_JSON)


def _open_live(predictor: Any, settings: ServeSettings) -> Any:
    """The live bins of the model's monitoring profile; None (and a warning) for a model
    folder without one (a model trained before profiles, a hand-made folder)."""
    from .. import _artifact_names as _names
    from ..monitor import live

    path = Path(predictor.model_dir) / _names.MONITOR_PROFILE
    if not path.is_file():
        logger.warning("no %s in %s: live drift is not counted (train the model again to have it)",
                       _names.MONITOR_PROFILE, predictor.model_dir)
        return None
    return live.LiveMonitor(live.read_profile(path), list(predictor.request_schema.names),
                             window=settings.drift_window, classes=predictor.classes)


def _open_request_log(predictor: Any, settings: ServeSettings) -> Any:
    if not settings.log_requests or settings.log_sample <= 0:
        return None
    from ..errors import ArtifactError

    features = predictor.request_schema.features
    try:
        return requestlog.RequestLogWriter(
            settings.log_requests, sample=settings.log_sample, model_sha256=str(predictor.card.get("sha256", "")),
            max_file_bytes=settings.log_max_file_bytes, max_total_bytes=settings.log_max_total_bytes,
            booleans=[f.name for f in features if f.kind == "boolean"], classes=predictor.classes,
            names=predictor.request_schema.names, numeric=predictor.request_schema.numeric_positions)
    except OSError as exc:
        raise ArtifactError(f"The request log folder {settings.log_requests} must be writable. Got "
                            f"{exc.strerror or exc} instead.", path=Path(settings.log_requests)) from None


def _data_bytes() -> int | None:
    """The process's private writable memory (what RLIMIT_DATA bounds), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextmanager
def memory_cap(budget: int):
    """At most ``budget`` more bytes of memory inside the block (RLIMIT_DATA, restored after);
    an allocation beyond fails, and the failure becomes an ArtifactError that says so."""
    import resource

    from ..errors import ArtifactError

    used = _data_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = None if used is None else used + budget
    if cap is not None and hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if cap is not None and (soft == resource.RLIM_INFINITY or cap < soft):
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    refusal = (f"Loading and warming up the model must take at most {budget} bytes of memory (max_model_memory). "
               "Got more instead")
    try:
        yield
    except MemoryError:
        raise ArtifactError(f"{refusal}; the model is not served.") from None
    except ArtifactError as exc:
        if cap is not None and any(sign in exc.message for sign in ("allocate memory", "MemoryError", "bad_alloc")):
            raise ArtifactError(f"{refusal} ({exc.message[:300]}); the model is not served.",
                                path=getattr(exc, "path", None)) from None
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def create_app(model_dir: str | Path, settings: ServeSettings | None = None, **overrides: Any) -> ServingApp:
    """The app serving the model in ``model_dir`` (a run's ``artifacts/``).

    Raises :class:`mlops_kit.errors.ArtifactError` when the model is missing, tampered with,
    holds untrusted types or fails its warm-up; settings come from ``settings``, else the
    ``MLOPS_KIT_*`` environment plus ``overrides``.
    """
    settings = settings or ServeSettings.from_env(**overrides)
    with memory_cap(settings.max_model_memory):
        predictor = open_predictor(model_dir, max_rows=settings.max_rows,
                                   unknown_categories=settings.unknown_categories, runtime=settings.runtime)
        predictor.warm_up()
    service = ModelService(predictor, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        # the model and the libraries are loaded for good: keep the collector from walking
        # them again and again (full collections were the tail of the latency)
        gc.collect()
        gc.freeze()
        # one request at a time per worker, on small matrices: BLAS/OpenMP thread pools only
        # compete with the event loop (measured: 100-row requests ~20% faster with 1 thread);
        # the ONNX session has one thread of its own, and the lean image no threadpoolctl
        if predictor.platform == "scikit-learn":
            from threadpoolctl import threadpool_limits
            threadpool_limits(limits=1)
        admin = None
        if settings.admin_port is not None and settings.log_requests:
            from ._admin import AdminListener

            admin = AdminListener(settings.log_requests, service.admin_host, settings.admin_port,
                                  settings.admin_token)
            await admin.start()
        service.ready = True
        service.metrics.ready.set(1)
        running = type(asyncio.get_running_loop()).__module__.split(".")[0]
        logging.getLogger("uvicorn.error").info("Serving model %s (%s, %s) on the %s event loop", service.name,
                                                predictor.platform, predictor.path, running)
        yield
        service.ready = False  # draining: readiness probes fail while requests finish
        service.metrics.ready.set(0)
        if admin is not None:
            await admin.close()
        if service.request_log is not None:
            service.request_log.close()

    routes = [
        Route("/v2", service.server_metadata, methods=["GET"]),
        Route("/v2/health/live", service.live, methods=["GET"]),
        Route("/v2/health/ready", service.ready_endpoint, methods=["GET"]),
        Route("/v2/models/{name}", service.model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", service.model_ready, methods=["GET"]),
        Route("/metrics", service.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", service.openapi_endpoint, methods=["GET"]),
        Route("/docs", service.docs_endpoint, methods=["GET"]),
        Route("/", service.root, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        InvalidRequest: _invalid_request, HTTPException: _http_error, Exception: _server_error})
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return ServingApp(service, app)


def app_from_env() -> ServingApp:
    """Factory for worker processes: the model folder from ``MLOPS_KIT_MODEL_DIR``."""
    model_dir = os.environ.get(MODEL_DIR_ENV)
    if not model_dir:
        from ..errors import ArtifactError
        raise ArtifactError(f"{MODEL_DIR_ENV} must name the model folder. Got nothing instead.")
    return create_app(model_dir)
